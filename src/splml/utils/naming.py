"""How runs are named when they are compared (report tables, W&B job types)."""

from __future__ import annotations

# Values of the `ablation` group that mean "the loss as configured".
NO_ABLATION = (None, "", "none", "None", "null")
#: The `head` option every method is described with; other heads are named beside the method.
DEFAULT_HEAD = "linear"
#: `head` options that add nothing to a method's name: the default, and none (task=retrieval has no head).
UNNAMED_HEADS = (None, "", DEFAULT_HEAD, "none")


def method_name(loss: str, ablation: str | None = None, head: str | None = None) -> str:
    """What a run compares as: the ablation variant's name when one is selected, else the loss;
    with a head other than the linear one, ``<method>+<head>`` (``an+q2l``, ``ll_r+boostlu``), so
    that runs of one loss with different heads are never averaged together.
    """
    name = str(ablation) if ablation not in NO_ABLATION else str(loss)
    return name if head in UNNAMED_HEADS else f"{name}+{head}"
