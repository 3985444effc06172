"""LL-Ct: temporarily correct the largest unknown losses (Large Loss Matters)."""

from __future__ import annotations

from torch import Tensor

from splml.methods.large_loss.base import (
    ScheduledLargeLoss,
    an_loss_matrix,
    large_loss_modified,
    select_large_unknown_losses,
)
from splml.methods.papers import KIM_2022
from splml.methods.registry import register_method


def large_loss_temporary_correction_loss(probs: Tensor, observed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """AN loss with the ``k`` largest unknown losses trained as positives (``-log p``) for this
    step only; mean over B x L.

    Kim et al., *Large Loss Matters in Weakly Supervised Multi-Label Classification*, CVPR 2022
    ("LL-Ct"). Returns ``(loss, corrected_mask)``.
    """
    selected = select_large_unknown_losses(an_loss_matrix(probs, observed), observed, k)
    return large_loss_modified(probs, observed, selected, "correct"), selected


@register_method(
    "ll_ct",
    title="LL-Ct",
    summary="large-loss temporary correction: the largest unknown losses are trained as positives for one step",
    paper=KIM_2022,
    formula="AN, with the k = ceil(B L t delta_rel) largest unknown losses trained as -log p at epoch t",
    comparison=True,
)
class LargeLossTemporaryCorrection(ScheduledLargeLoss):
    """LL-Ct. Epoch 0 (0-based) is plain AN; at epoch ``t >= 1`` the corrected count is
    ``k = ceil(B * L * t * delta_rel)``. ``delta_rel`` is a fraction (paper: 0.2 %)."""

    name = "ll_ct"
    loss_fn = staticmethod(large_loss_temporary_correction_loss)

    def __init__(self, delta_rel: float = 0.002) -> None:
        super().__init__(delta_rel)
