"""Weak AN (WAN): assumed negatives are down-weighted by 1 / (L - 1)."""

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
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method


def weak_assume_negative_loss(probs: Tensor, observed: Tensor) -> Tensor:
    """AN loss whose unknown (assumed-negative) terms are divided by ``L - 1``; mean over B x L.

    Per entry: ``z = 1``: ``-log p``; ``z = 0``: ``-log(1 - p) / (L - 1)``; annotated negatives
    (``z = -1``) are real negatives and keep weight 1. The weight makes the ``L - 1`` assumed
    negatives of a single-positive row count as much, together, as its one positive.
    Cole et al., *Multi-Label Learning from Single Positive Labels*, CVPR 2021 ("WAN").
    """
    num_classes = probs.shape[-1]
    # With one class there is nothing to assume; guard the division rather than emit inf.
    weight = 1.0 / max(num_classes - 1, 1)
    pos = observed_positive_mask(observed)
    unk = unknown_mask(observed)
    neg = annotated_negative_mask(observed)
    loss = pos * neg_log(probs) + neg_log(1 - probs) * (weight * unk.to(probs.dtype) + neg)
    return loss.mean()


@register_method(
    "wan",
    title="WAN",
    summary="weak AN: assumed negatives weighted 1/(L-1)",
    paper=COLE_2021,
    formula="z=1: -log p; z=0: -log(1-p)/(L-1); z=-1: -log(1-p)",
    comparison=True,
)
class WeakAssumeNegativeLoss(SPMLLoss):
    name = "wan"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return weak_assume_negative_loss(outputs["logits"].sigmoid(), batch["observed"])
