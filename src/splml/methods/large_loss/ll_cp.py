"""LL-Cp: permanently correct the largest unknown losses (Large Loss Matters)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, unknown_mask
from splml.methods.large_loss.base import (
    an_loss_matrix,
    large_loss_count,
    large_loss_modified,
    select_large_unknown_losses,
)
from splml.methods.large_loss.store import ObservedLabelStore
from splml.methods.papers import KIM_2022
from splml.methods.registry import register_method


def large_loss_permanent_correction(probs: Tensor, observed: Tensor, delta_rel: float) -> tuple[Tensor, Tensor]:
    """Pick the entries to flip to positive for good, and the loss with them as positives.

    Among the unknown entries of the batch, the ``k = ceil(B * L * delta_rel)`` largest AN losses
    (a constant count: earlier flips already reduce the loss, so the count does not grow with the
    epoch as in LL-R/Ct) are trained as positives in this step and returned as ``flip_mask`` so
    the label store can set them to 1. ``observed`` must already contain earlier flips.
    Kim et al., *Large Loss Matters in Weakly Supervised Multi-Label Classification*, CVPR 2022
    ("LL-Cp"). The authors' public code compares the scheme name with ``is``, which makes Cp run
    the Ct schedule and never store flips; here Cp really uses its own ``k`` and returns the flips.

    Returns ``(loss, flip_mask)``; loss is the mean over B x L.
    """
    b, l = probs.shape
    k = large_loss_count(b, l, delta_rel, int(unknown_mask(observed).sum()))
    flip = select_large_unknown_losses(an_loss_matrix(probs, observed), observed, k)
    return large_loss_modified(probs, observed, flip, "correct"), flip


@register_method(
    "ll_cp",
    title="LL-Cp",
    summary="large-loss permanent correction: the largest unknown losses are flipped to positive for good",
    paper=KIM_2022,
    formula="AN on the corrected labels; from epoch 1 the k = ceil(B L delta_rel) largest unknown losses are flipped to 1",
    stores=(ObservedLabelStore,),
    comparison=True,
)
class LargeLossPermanentCorrection(SPMLLoss):
    """LL-Cp. Epoch 0 (0-based) is plain AN with no flips; from epoch 1 on each batch flips
    ``ceil(B * L * delta_rel)`` unknowns (``delta_rel`` a fraction; paper: 0.1 %).

    Returns ``{"loss", "flip_mask" (bool B x L, the (row, class) pairs the observed-label store
    callback must set to 1), "num_corrected"}``. The callback replaces ``batch["observed"]`` with
    the stored labels, so already-flipped entries are positives here and are not picked again.
    """

    name = "ll_cp"

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        return [ObservedLabelStore(num_samples, num_classes)]

    def __init__(self, delta_rel: float = 0.001) -> None:
        super().__init__()
        self.delta_rel = delta_rel

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        probs = outputs["logits"].sigmoid()
        observed = batch["observed"]
        # Epoch 0 is the AN warm-up: selecting with a zero fraction yields AN and an empty mask.
        fraction = self.delta_rel if ctx.epoch >= 1 else 0.0
        loss, flip = large_loss_permanent_correction(probs, observed, fraction)
        return {"loss": loss, "flip_mask": flip.detach(), "num_corrected": flip.sum().detach().to(loss.dtype)}
