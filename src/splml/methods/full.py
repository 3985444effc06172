"""Oracle: binary cross-entropy against the full labels (the upper bound of every table)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method


def full_bce_loss(probs: Tensor, target: Tensor) -> Tensor:
    """Mean over B x L of ``-y log p - (1 - y) log(1 - p)`` with the full labels ``y``.

    This is the "full labels" row of Cole et al., *Multi-Label Learning from Single Positive
    Labels*, CVPR 2021. Uses ``-log(x + 1e-5)`` like every other loss of the suite.
    """
    return (target * neg_log(probs) + (1 - target) * neg_log(1 - probs)).mean()


@register_method(
    "full",
    title="full labels",
    summary="BCE on the full labels (oracle, upper bound)",
    paper=COLE_2021,
    formula="-y log p - (1-y) log(1-p)",
    comparison=True,
)
class FullLabelLoss(SPMLLoss):
    name = "full"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return full_bce_loss(outputs["logits"].sigmoid(), batch["target"])
