"""ASL: asymmetric focusing and probability shifting on negatives."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask
from splml.methods.papers import RIDNIK_2021
from splml.methods.registry import register_method


def asymmetric_loss(
    probs: Tensor,
    observed: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    detach_focusing_weight: bool = True,
) -> Tensor:
    """Asymmetric loss, mean over B x L; every non-positive entry is a negative (as in AN).

    Per entry::

        z = 1 : (1 - p)^gamma_pos * -log(p)
        else  : p_m^gamma_neg * -log(1 - p_m),   p_m = max(p - clip, 0)

    The shift ``clip`` discards very easy negatives entirely, which also tolerates some false
    negatives. Ridnik et al., *Asymmetric Loss For Multi-Label Classification*, ICCV 2021.
    The authors' training recipe detaches the focusing weights (they are treated as constants);
    ``detach_focusing_weight`` keeps that as the default. Unlike the paper's code (sum over
    entries), this is a mean, like every loss of the suite.
    """
    pos = observed_positive_mask(observed)
    shifted = (probs - clip).clamp(min=0) if clip > 0 else probs
    w_pos = (1 - probs) ** gamma_pos
    w_neg = shifted**gamma_neg
    if detach_focusing_weight:
        w_pos, w_neg = w_pos.detach(), w_neg.detach()
    loss = pos * w_pos * neg_log(probs) + (~pos) * w_neg * neg_log(1 - shifted)
    return loss.mean()


@register_method(
    "asl",
    title="ASL",
    summary="asymmetric focusing and probability shifting on negatives",
    paper=RIDNIK_2021,
    formula="z=1: (1-p)^g+ (-log p); else: p_m^g- (-log(1-p_m)), p_m = max(p - clip, 0)",
    comparison=True,
)
class AsymmetricLoss(SPMLLoss):
    name = "asl"

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        detach_focusing_weight: bool = True,
    ) -> None:
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.detach_focusing_weight = detach_focusing_weight

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return asymmetric_loss(
            outputs["logits"].sigmoid(),
            batch["observed"],
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.detach_focusing_weight,
        )
