"""Focal loss with every non-positive treated as a negative."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask
from splml.methods.papers import LIN_2017
from splml.methods.registry import register_method


def focal_loss(probs: Tensor, observed: Tensor, alpha: float = 1.0, gamma: float = 2.0) -> Tensor:
    """Focal loss, mean over B x L::

        z = 1 : alpha * (1 - p)^gamma * -log(p)
        else  : p^gamma * -log(1 - p)

    Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017, in the multi-label form used
    as a baseline by Zhang et al. (Hill/SPLC). As in the method specification, ``alpha`` weights
    the positives only (Lin et al.'s ``1 - alpha`` on negatives is not applied); ``alpha = 1``
    is the unweighted focal loss. The focusing weights are not detached.
    """
    pos = observed_positive_mask(observed)
    loss = alpha * (1 - probs) ** gamma * neg_log(probs) * pos + (~pos) * probs**gamma * neg_log(1 - probs)
    return loss.mean()


@register_method(
    "focal",
    title="Focal",
    summary="focal loss, every non-positive a negative",
    paper=LIN_2017,
    formula="z=1: alpha (1-p)^gamma (-log p); else: p^gamma (-log(1-p))",
    comparison=True,
)
class FocalLoss(SPMLLoss):
    name = "focal"

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return focal_loss(outputs["logits"].sigmoid(), batch["observed"], self.alpha, self.gamma)
