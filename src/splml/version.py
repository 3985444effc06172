"""The package version: one place, read by ``pyproject.toml`` (setuptools' ``attr:``), the package and the provenance records."""

__version__ = "0.1.0"
