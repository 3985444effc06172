"""Write the README's methods table from the method registry: ``python docs/make_methods_table.py``.

The table lives between the ``<!-- BEGIN methods -->`` / ``<!-- END methods -->`` markers of
README.md; ``tests/methods/test_registry.py`` fails when it differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

from splml.methods.registry import methods_table
from splml.utils.markdown import write_generated_block

README = Path(__file__).resolve().parents[1] / "README.md"

if __name__ == "__main__":
    write_generated_block(README, "methods", methods_table())
    print(f"wrote the methods table into {README}")
