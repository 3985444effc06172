"""SPLC: self-paced loss correction of likely missing positives, with a focal-margin loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, neg_log, observed_positive_mask, unknown_mask
from splml.methods.papers import ZHANG_2021
from splml.methods.registry import register_method


def splc_loss(
    logits: Tensor,
    observed: Tensor,
    margin: float = 1.0,
    tau: float = 0.6,
    gamma: float = 2.0,
    correct: bool = True,
) -> tuple[Tensor, Tensor]:
    """SPLC loss (mean over B x L) and the mask of unknown entries treated as positives.

    1. Annotated positives get the margin: ``x' = x - margin``; every other logit is unchanged.
    2. If ``correct``: unknown entries with ``sigmoid(x) > tau`` become positives for this step
       only (nothing is stored). Annotated negatives are never corrected.
    3. Focal BCE on ``p' = sigmoid(x')`` with the resulting target ``t``::

           t = 1 : (1 - p')^gamma * -log(p')
           t = 0 : p'^gamma * -log(1 - p')

    Zhang et al., *Simple and Robust Loss Design for Multi-Label Learning with Missing Labels*,
    arXiv 2112.07368, 2021 ("SPLC", used from the second epoch on). The authors' code uses
    log-sigmoid; here ``-log(x + 1e-5)`` like the rest of the suite.
    """
    pos = observed_positive_mask(observed)
    shifted = torch.where(pos, logits - margin, logits)
    probs = shifted.sigmoid()
    if correct:
        # Unknown logits carry no margin, so ``probs`` there is the plain prediction; the
        # threshold decision is a constant mask (no gradient flows through a comparison).
        pseudo = unknown_mask(observed) & (probs.detach() > tau)
    else:
        pseudo = torch.zeros_like(pos)
    target_pos = pos | pseudo
    loss = target_pos * (1 - probs) ** gamma * neg_log(probs) + (~target_pos) * probs**gamma * neg_log(1 - probs)
    return loss.mean(), pseudo


@register_method(
    "splc",
    title="SPLC",
    summary="self-paced correction of likely missing positives (p > tau) with a focal-margin loss",
    paper=ZHANG_2021,
    formula="focal BCE of sigmoid(x - m [z=1]) with target 1 where z=1 or (z=0 and p > tau, from epoch 1)",
    comparison=True,
)
class SPLCLoss(SPMLLoss):
    """SPLC; correction is active from ``ctx.epoch >= correction_start_epoch`` (0-based; 1 = second epoch)."""

    name = "splc"

    def __init__(
        self, margin: float = 1.0, tau: float = 0.6, gamma: float = 2.0, correction_start_epoch: int = 1
    ) -> None:
        super().__init__()
        self.margin = margin
        self.tau = tau
        self.gamma = gamma
        self.correction_start_epoch = correction_start_epoch

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        loss, pseudo = splc_loss(
            outputs["logits"],
            batch["observed"],
            self.margin,
            self.tau,
            self.gamma,
            correct=ctx.epoch >= self.correction_start_epoch,
        )
        return {
            "loss": loss,
            "num_corrected": pseudo.sum().detach().to(loss.dtype),
            "pseudo_positive_mask": pseudo.detach(),
        }
