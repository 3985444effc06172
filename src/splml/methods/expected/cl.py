"""CL: consistency of the predictions with the per-sample running scores."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, require_extra
from splml.methods.expected.store import ScoreStore
from splml.methods.papers import VERELST_2023
from splml.methods.registry import register_composition, register_method


def consistency_loss(probs: Tensor, previous_scores: Tensor) -> Tensor:
    """``(1/B) sum_n ||p_n - s_n||_1 / L`` = the mean over B x L of ``|p - s|``.

    ``s`` is the sample's score in the EMA store *before* this step's update (a constant
    target). The paper writes an L1 norm per sample; dividing it by ``L`` makes the term a mean
    over entries like every other loss, so ``gamma`` does not have to change with the number of
    classes. Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
    Single-Label Annotations*, WACV 2023 ("CL").
    """
    return (probs - previous_scores.detach().to(probs.dtype)).abs().mean()


@register_method(
    "cl",
    title="CL",
    summary="consistency of the predictions with the per-sample EMA scores",
    paper=VERELST_2023,
    formula="mean over B x L of |p - s|, s = the sample's EMA scores before this step",
    stores=(ScoreStore,),
    term=True,
)
class ConsistencyLoss(SPMLLoss):
    """The CL term alone (trained inside :class:`splml.methods.combined.CombinedLoss`).

    Extras: ``ema_scores`` (float B x L), the score-store rows of the batch before the update.
    """

    name = "cl"
    requires_extras = ("ema_scores",)

    def __init__(self, score_momentum: float = 0.8) -> None:
        super().__init__()
        self.score_momentum = float(score_momentum)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        return [ScoreStore(num_samples, num_classes, self.score_momentum)]

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return consistency_loss(outputs["logits"].sigmoid(), require_extra(batch, "ema_scores", self.name))


# base + gamma * CL (conf/loss/<base>_cl.yaml); EP + CL is the ablation table's.
register_composition("en", "cl", comparison=True)
register_composition("an", "cl")
register_composition("epr", "cl")
register_composition("ep", "cl")
