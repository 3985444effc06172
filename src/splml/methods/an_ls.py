"""AN with label smoothing (AN-LS)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method


def label_smoothing_an_loss(probs: Tensor, observed: Tensor, eps: float = 0.1) -> Tensor:
    """Assume-negative loss with symmetric label smoothing, mean over B x L.

    Per entry, with ``z`` the observed label::

        z = 1 : (1 - eps) * -log(p) + eps * -log(1 - p)
        else  : (1 - eps) * -log(1 - p) + eps * -log(p)

    i.e. BCE against the smoothed target ``1 - eps`` (positives) or ``eps`` (unknowns and annotated
    negatives, which AN treats alike). Cole et al., *Multi-Label Learning from Single Positive
    Labels*, CVPR 2021 ("AN-LS").
    """
    pos = observed_positive_mask(observed)
    target = pos.to(probs.dtype) * (1 - 2 * eps) + eps  # 1 - eps on positives, eps elsewhere
    return (target * neg_log(probs) + (1 - target) * neg_log(1 - probs)).mean()


@register_method(
    "an_ls",
    title="AN-LS",
    summary="assume negative, with label smoothing",
    paper=COLE_2021,
    formula="BCE(p, t), t = 1-eps where z=1, eps elsewhere (eps = 0.1)",
    comparison=True,
)
class LabelSmoothingANLoss(SPMLLoss):
    name = "an_ls"

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        return label_smoothing_an_loss(outputs["logits"].sigmoid(), batch["observed"], self.eps)
