"""LL-R: reject the largest unknown losses (Large Loss Matters, rejection)."""

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


def large_loss_rejection_loss(probs: Tensor, observed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """AN loss with the ``k`` largest unknown losses of the batch set to 0; mean over B x L.

    Kim et al., *Large Loss Matters in Weakly Supervised Multi-Label Classification*, CVPR 2022
    ("LL-R"). Returns ``(loss, rejected_mask)``; rejected entries get zero gradient.
    """
    selected = select_large_unknown_losses(an_loss_matrix(probs, observed), observed, k)
    return large_loss_modified(probs, observed, selected, "reject"), selected


@register_method(
    "ll_r",
    title="LL-R",
    summary="large-loss rejection: the largest unknown losses are left out",
    paper=KIM_2022,
    formula="AN, with the k = ceil(B L t delta_rel) largest unknown losses set to 0 at epoch t",
    comparison=True,
)
class LargeLossRejection(ScheduledLargeLoss):
    """LL-R. Epoch 0 (0-based) is plain AN; at epoch ``t >= 1`` the rejected count is
    ``k = ceil(B * L * t * delta_rel)`` (the paper's ``(t - 1)`` with 1-based epochs).
    ``delta_rel`` is a fraction (paper: 0.5 %)."""

    name = "ll_r"
    loss_fn = staticmethod(large_loss_rejection_loss)

    def __init__(self, delta_rel: float = 0.005) -> None:
        super().__init__(delta_rel)
