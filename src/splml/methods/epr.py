"""EPR: observed positives plus the expected-positive regulariser."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, annotated_negative_mask, neg_log, observed_positive_mask
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method


def expected_positive_regularizer(probs: Tensor, expected_positives: float) -> Tensor:
    """``R = ((1/B) sum_n sum_c p_nc - K)^2 / L^2``.

    Pushes the batch-average number of predicted positives towards ``K``, the expected number
    of positives per image. Cole et al., *Multi-Label Learning from Single Positive Labels*,
    CVPR 2021 (the squared, ``L^2``-normalised form used in their experiments).
    """
    num_classes = probs.shape[-1]
    return (probs.sum(dim=-1).mean() - expected_positives) ** 2 / num_classes**2


def expected_positive_regularized_loss(probs: Tensor, observed: Tensor, expected_positives: float) -> Tensor:
    """``mean_{B x L}([z = 1] * -log p + [z = -1] * -log(1 - p)) + R(p; K)``.

    Unknown entries get no direct loss; only the regulariser :func:`expected_positive_regularizer`
    keeps the predictions from collapsing to all-positive. Cole et al., CVPR 2021 ("EPR").
    """
    pos = observed_positive_mask(observed)
    neg = annotated_negative_mask(observed)
    data = (pos * neg_log(probs) + neg * neg_log(1 - probs)).mean()
    return data + expected_positive_regularizer(probs, expected_positives)


@register_method(
    "epr",
    title="EPR",
    summary="observed positives plus the expected-positive regulariser",
    paper=COLE_2021,
    formula="[z=1](-log p) + [z=-1](-log(1-p)) + (mean_batch sum_c p - K)^2 / L^2",
    comparison=True,
)
class ExpectedPositiveRegularizerLoss(SPMLLoss):
    name = "epr"

    def __init__(self, expected_positives: float) -> None:
        super().__init__()
        self.expected_positives = float(expected_positives)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return expected_positive_regularized_loss(
            outputs["logits"].sigmoid(), batch["observed"], self.expected_positives
        )
