"""How runs are named when they are compared (report tables, W&B job types)."""

from __future__ import annotations

# Values of the `ablation` group that mean "the loss as configured".
NO_ABLATION = (None, "", "none", "None", "null")


def method_name(loss: str, ablation: str | None = None) -> str:
    """What a run compares as: the ablation variant's name when one is selected, else the loss."""
    return str(ablation) if ablation not in NO_ABLATION else str(loss)
