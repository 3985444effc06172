"""EN: expected negatives (ignore the labels the model expects to be positive)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import (
    LossContext,
    SPMLLoss,
    annotated_negative_mask,
    neg_log,
    observed_positive_mask,
    require_extra,
)
from splml.methods.expected.store import ScoreStore
from splml.methods.papers import VERELST_2023
from splml.methods.registry import register_method


def expected_negative_loss(probs: Tensor, observed: Tensor, expected_positive_mask: Tensor) -> dict[str, Tensor]:
    """Expected-negative loss, mean over B x L (= the paper's ``-1/L sum_i``, averaged over the batch)::

        z = 1                              : -log p
        expected positive, not annotated   : 0          (no loss, no gradient)
        otherwise (expected negative)      : -log(1 - p)

    ``expected_positive_mask`` (bool B x L) comes from the score-store callback: per class, the
    highest-scored samples, re-chosen each epoch (the annotated positives at epoch 0). Annotated
    negatives (``z = -1``) are always trained as negatives, whatever the mask says.
    Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from Single-Label
    Annotations*, WACV 2023.

    Returns ``loss`` and ``num_ignored`` (expected positives that were not annotated).
    """
    pos = observed_positive_mask(observed)
    neg = annotated_negative_mask(observed)
    ignored = expected_positive_mask.bool() & ~pos & ~neg
    expected_negative = ~pos & ~ignored
    loss = (pos * neg_log(probs) + expected_negative * neg_log(1 - probs)).mean()
    return {"loss": loss, "num_ignored": ignored.sum().detach().to(loss.dtype)}


class ScoreStoreLoss(SPMLLoss):
    """A loss that reads the expected positives of the EMA score store (EN, EP)."""

    requires_extras = ("expected_positive",)

    def __init__(self, expected_positives: float, score_momentum: float = 0.8) -> None:
        super().__init__()
        self.expected_positives = float(expected_positives)
        self.score_momentum = float(score_momentum)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        return [ScoreStore(num_samples, num_classes, self.score_momentum, self.expected_positives)]


@register_method(
    "en",
    title="EN",
    summary="expected negatives: the labels the EMA scores expect to be positive get no loss",
    paper=VERELST_2023,
    formula="z=1: -log p; expected positive, not annotated: 0; otherwise: -log(1-p)",
    stores=(ScoreStore,),
    comparison=True,
)
class ExpectedNegativeLoss(ScoreStoreLoss):
    """EN. Extras: ``expected_positive`` (bool B x L), written by the score-store callback."""

    name = "en"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        return expected_negative_loss(
            outputs["logits"].sigmoid(), batch["observed"], require_extra(batch, "expected_positive", self.name)
        )
