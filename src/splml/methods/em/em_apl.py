"""EM + APL: entropy maximisation plus asymmetric pseudo-labelling (soft negatives)."""

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
    soft_bce,
    unknown_mask,
)
from splml.methods.em.em import binary_entropy
from splml.methods.em.store import SoftNegativeStore
from splml.methods.papers import ZHOU_2022
from splml.methods.registry import register_method


def em_apl_loss(
    probs: Tensor,
    observed: Tensor,
    alpha: float,
    beta: float,
    soft_negative_target: Tensor,
    soft_negative_mask: Tensor,
) -> dict[str, Tensor]:
    """EM + APL loss, mean over B x L::

        z = 1                        : -log p
        z = 0, not pseudo-labelled   : -alpha * H(p)
        z = 0, soft negative (mask)  : beta * BCE(p, t),  t = stored soft target
        z = -1                       : -log(1 - p)

    APL (asymmetric pseudo-labelling) only creates negatives: after each epoch from the warm-up
    on, the store callback marks the lowest-scored unknowns of every class and freezes their
    current score ``t`` as a soft target. Zhou et al., *Acknowledging the Unknown for Multi-label
    Learning with Single Positive Labels*, ECCV 2022.

    ``soft_negative_mask`` is intersected with the unknown mask, so a stale mark on an observed
    label can never override it. Returns ``loss`` and ``num_soft_negatives`` (entries in the batch).
    """
    pos = observed_positive_mask(observed)
    neg = annotated_negative_mask(observed)
    soft = unknown_mask(observed) & soft_negative_mask.bool()
    free = unknown_mask(observed) & ~soft
    target = soft_negative_target.detach().to(probs.dtype)
    loss = (
        pos * neg_log(probs)
        - alpha * binary_entropy(probs) * free
        + beta * soft_bce(probs, target) * soft
        + neg * neg_log(1 - probs)
    )
    mean = loss.mean()
    return {"loss": mean, "num_soft_negatives": soft.sum().detach().to(mean.dtype)}


@register_method(
    "em_apl",
    title="EM + APL",
    summary="entropy maximisation plus asymmetric pseudo-labels (soft negatives of the lowest-scored unknowns)",
    paper=ZHOU_2022,
    formula="z=1: -log p; z=0: -alpha H(p), or beta BCE(p, t) on the soft negatives (t stored); z=-1: -log(1-p)",
    stores=(SoftNegativeStore,),
    comparison=True,
)
class EMAPLLoss(SPMLLoss):
    """EM + APL; the soft-negative store is owned by a callback.

    Extras:
        ``apl_target``: float B x L, the stored soft targets (read where ``apl_mask`` is set).
        ``apl_mask``: bool B x L, entries already pseudo-labelled as soft negatives.
    """

    name = "em_apl"
    requires_extras = ("apl_target", "apl_mask")

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        return [SoftNegativeStore(num_samples, num_classes, warmup=self.warmup)]

    def __init__(self, alpha: float = 0.1, beta: float = 0.9, warmup: int = 5) -> None:
        super().__init__()
        self.warmup = int(warmup)
        self.alpha = alpha
        self.beta = beta

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        return em_apl_loss(
            outputs["logits"].sigmoid(),
            batch["observed"],
            self.alpha,
            self.beta,
            require_extra(batch, "apl_target", self.name),
            require_extra(batch, "apl_mask", self.name),
        )
