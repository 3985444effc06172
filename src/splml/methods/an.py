"""AN: assume every unannotated label is negative."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method


def assume_negative_loss(probs: Tensor, observed: Tensor) -> Tensor:
    """Mean over B x L of ``-log p`` where ``z = 1`` and ``-log(1 - p)`` elsewhere.

    Cole et al., *Multi-Label Learning from Single Positive Labels*, CVPR 2021 ("AN").
    Annotated negatives (``z = -1``) and unknowns (``z = 0``) are both trained as negatives.
    """
    pos = observed_positive_mask(observed)
    return (pos * neg_log(probs) + (~pos) * neg_log(1 - probs)).mean()


@register_method(
    "an",
    title="AN",
    summary="assume every unannotated label is negative",
    paper=COLE_2021,
    formula="z=1: -log p; otherwise: -log(1-p)",
    comparison=True,
)
class AssumeNegativeLoss(SPMLLoss):
    name = "an"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return assume_negative_loss(outputs["logits"].sigmoid(), batch["observed"])
