"""Hill: focal-margin positives and a hill-shaped, bounded loss on negatives."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask
from splml.methods.papers import ZHANG_2021
from splml.methods.registry import register_method


def hill_loss(logits: Tensor, observed: Tensor, margin: float = 1.0, gamma: float = 2.0, lamb: float = 1.5) -> Tensor:
    """Hill loss, mean over B x L::

        z = 1 : (1 - p_m)^gamma * -log(p_m),   p_m = sigmoid(logit - margin)   (focal margin)
        else  : (lamb - p) * p^2,              p   = sigmoid(logit)

    The negative term is bounded and flat for large ``p`` (a "hill"), so confident predictions on
    unannotated labels, which are often missing positives, are pushed down less than by BCE.
    Zhang et al., *Simple and Robust Loss Design for Multi-Label Learning with Missing Labels*,
    arXiv 2112.07368, 2021. Mean instead of the code's sum, like every loss of the suite.
    """
    pos = observed_positive_mask(observed)
    p_margin = (logits - margin).sigmoid()
    p = logits.sigmoid()
    loss = pos * (1 - p_margin) ** gamma * neg_log(p_margin) + (~pos) * (lamb - p) * p**2
    return loss.mean()


@register_method(
    "hill",
    title="Hill",
    summary="focal-margin positives, bounded hill-shaped negatives",
    paper=ZHANG_2021,
    formula="z=1: (1-p_m)^gamma (-log p_m), p_m = sigmoid(x - m); else: (lambda - p) p^2",
    comparison=True,
)
class HillLoss(SPMLLoss):
    name = "hill"

    def __init__(self, margin: float = 1.0, gamma: float = 2.0, lamb: float = 1.5) -> None:
        super().__init__()
        self.margin = margin
        self.gamma = gamma
        self.lamb = lamb

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return hill_loss(outputs["logits"], batch["observed"], self.margin, self.gamma, self.lamb)
