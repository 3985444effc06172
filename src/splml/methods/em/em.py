"""EM: entropy maximisation on unknown labels."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import (
    LossContext,
    SPMLLoss,
    annotated_negative_mask,
    neg_log,
    observed_positive_mask,
    unknown_mask,
)
from splml.methods.papers import ZHOU_2022
from splml.methods.registry import register_method


def binary_entropy(probs: Tensor) -> Tensor:
    """``H(p) = -p log p - (1 - p) log(1 - p)`` with the suite's ``-log(x + 1e-5)``."""
    return probs * neg_log(probs) + (1 - probs) * neg_log(1 - probs)


def entropy_maximization_loss(probs: Tensor, observed: Tensor, alpha: float = 0.1) -> Tensor:
    """EM loss, mean over B x L::

        z = 1  : -log p
        z = 0  : -alpha * H(p)        (maximise the entropy of unknown labels)
        z = -1 : -log(1 - p)

    Instead of assuming unknowns negative, EM keeps the model undecided about them, which stops
    it from fitting false negatives. Zhou et al., *Acknowledging the Unknown for Multi-label
    Learning with Single Positive Labels*, ECCV 2022. The loss is negative when unknowns dominate;
    only its gradient matters.
    """
    pos = observed_positive_mask(observed)
    unk = unknown_mask(observed)
    neg = annotated_negative_mask(observed)
    loss = pos * neg_log(probs) - alpha * binary_entropy(probs) * unk + neg * neg_log(1 - probs)
    return loss.mean()


@register_method(
    "em",
    title="EM",
    summary="entropy maximisation on the unknown labels",
    paper=ZHOU_2022,
    formula="z=1: -log p; z=0: -alpha H(p); z=-1: -log(1-p)",
    comparison=True,
)
class EntropyMaximizationLoss(SPMLLoss):
    name = "em"

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return entropy_maximization_loss(outputs["logits"].sigmoid(), batch["observed"], self.alpha)
