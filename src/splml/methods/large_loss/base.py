"""Shared machinery of the Large Loss Matters family (LL-R, LL-Ct, LL-Cp).

Kim et al., *Large Loss Matters in Weakly Supervised Multi-Label Classification*, CVPR 2022.
During training the unknown labels with the largest AN losses are the likeliest false
negatives; from the second epoch on the methods reject them (LL-R) or train them as positives,
for one step (LL-Ct) or for good (LL-Cp). The three modules ``ll_r``, ``ll_ct``, ``ll_cp`` of this folder only
differ in how many entries they select and what they do with them.

``delta_rel`` is a *fraction* of the B x L entries of a batch. The paper and its command line
state it in percent (0.5 / 0.2 / 0.1 for R / Ct / Cp, divided by 100 in the code), so the
suite's defaults are 0.005 / 0.002 / 0.001.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask, unknown_mask


def large_loss_count(batch_size: int, num_classes: int, fraction: float, num_unknown: int) -> int:
    """``k = ceil(B * L * fraction)``, clamped to ``[0, num_unknown]``.

    Rounding to 9 decimals first keeps float noise (``4 * 5 * 0.05 = 1.0000000000000002``) from
    adding a spurious entry.
    """
    k = math.ceil(round(batch_size * num_classes * fraction, 9))
    return max(0, min(k, num_unknown))


def an_loss_matrix(probs: Tensor, observed: Tensor) -> Tensor:
    """Element-wise AN loss: ``-log p`` on annotated positives, ``-log(1 - p)`` elsewhere."""
    pos = observed_positive_mask(observed)
    return torch.where(pos, neg_log(probs), neg_log(1 - probs))


def select_large_unknown_losses(losses: Tensor, observed: Tensor, k: int) -> Tensor:
    """Boolean B x L mask of the ``k`` unknown entries with the largest loss in the batch.

    Only unknown entries (``observed == 0``) compete; ``k`` is clamped to their number. Ties are
    broken arbitrarily by ``topk`` but exactly ``k`` entries are returned (the public code's
    threshold comparison could return more).
    """
    unk = unknown_mask(observed)
    k = max(0, min(int(k), int(unk.sum())))
    mask = torch.zeros_like(unk)
    if k == 0:
        return mask
    # Known entries get -inf so they can never be among the k largest.
    candidates = torch.where(unk, losses.detach(), torch.full_like(losses, -math.inf)).flatten()
    idx = candidates.topk(k).indices
    mask.view(-1)[idx] = True
    return mask


def large_loss_modified(probs: Tensor, observed: Tensor, selected: Tensor, mode: str) -> Tensor:
    """Mean over B x L of the AN loss with the ``selected`` entries rejected or corrected.

    ``mode="reject"``: selected entries contribute 0 (they still count in the B x L denominator,
    as in the paper's code). ``mode="correct"``: selected entries get ``-log p`` (target 1).
    """
    base = an_loss_matrix(probs, observed)
    if mode == "reject":
        modified = torch.where(selected, torch.zeros_like(base), base)
    elif mode == "correct":
        modified = torch.where(selected, neg_log(probs), base)
    else:
        raise ValueError(f"unknown large-loss mode {mode!r}; expected 'reject' or 'correct'")
    return modified.mean()


class ScheduledLargeLoss(SPMLLoss):
    """LL-R / LL-Ct: epoch 0 (0-based) is plain AN; at epoch ``t >= 1`` the ``k =
    ceil(B * L * t * delta_rel)`` largest unknown losses go through ``loss_fn`` (the paper's
    ``(t - 1)`` with 1-based epochs). Returns the selection as ``pseudo_positive_mask``."""

    #: ``(probs, observed, k) -> (loss, selected)``; set by each method's module.
    loss_fn: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]

    def __init__(self, delta_rel: float) -> None:
        super().__init__()
        self.delta_rel = delta_rel

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        probs = outputs["logits"].sigmoid()
        observed = batch["observed"]
        b, l = probs.shape
        k = large_loss_count(b, l, ctx.epoch * self.delta_rel, int(unknown_mask(observed).sum()))
        loss, selected = self.loss_fn(probs, observed, k)
        return {
            "loss": loss,
            "num_corrected": selected.sum().detach().to(loss.dtype),
            "pseudo_positive_mask": selected.detach(),
        }
