"""EP: expected positives trained as positives (the ablation of EN)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, annotated_negative_mask, neg_log, observed_positive_mask, require_extra
from splml.methods.expected.en import ScoreStoreLoss
from splml.methods.expected.store import ScoreStore
from splml.methods.papers import VERELST_2023
from splml.methods.registry import register_method


def expected_positive_loss(probs: Tensor, observed: Tensor, expected_positive_mask: Tensor) -> dict[str, Tensor]:
    """Expected-positive loss, mean over B x L::

        z = 1 or expected positive : -log p
        otherwise                  : -log(1 - p)

    Same inputs as :func:`splml.methods.expected.en.expected_negative_loss`, but the unannotated expected
    positives become pseudo-positives instead of being ignored. Annotated negatives stay
    negatives. Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
    Single-Label Annotations*, WACV 2023 (ablation "EP").

    Returns ``loss`` and ``num_corrected`` (expected positives that were not annotated).
    """
    pos = observed_positive_mask(observed)
    neg = annotated_negative_mask(observed)
    pseudo = expected_positive_mask.bool() & ~pos & ~neg
    target_pos = pos | pseudo
    loss = (target_pos * neg_log(probs) + (~target_pos) * neg_log(1 - probs)).mean()
    return {"loss": loss, "num_corrected": pseudo.sum().detach().to(loss.dtype)}


@register_method(
    "ep",
    title="EP",
    summary="expected positives trained as positives (the ablation of EN)",
    paper=VERELST_2023,
    formula="z=1 or expected positive: -log p; otherwise: -log(1-p)",
    stores=(ScoreStore,),
)
class ExpectedPositiveLoss(ScoreStoreLoss):
    """EP. Extras: ``expected_positive`` (bool B x L), written by the score-store callback."""

    name = "ep"

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        return expected_positive_loss(
            outputs["logits"].sigmoid(), batch["observed"], require_extra(batch, "expected_positive", self.name)
        )
