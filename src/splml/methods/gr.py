"""GR: generalised robust loss with epoch-scheduled weighting of unknown labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from splml.methods.base import (
    LOG_EPS,
    LossContext,
    SPMLLoss,
    annotated_negative_mask,
    linear_schedule,
    neg_log,
    observed_positive_mask,
    unknown_mask,
)
from splml.methods.papers import CHEN_2024
from splml.methods.registry import register_method


def generalized_robust_loss(
    probs: Tensor,
    observed: Tensor,
    w: float,
    b: float,
    mu: float,
    sigma: float,
    q2: float = 0.01,
    q3: float = 1.0,
) -> Tensor:
    """Generalised robust (GR) loss, mean over B x L.

    Per entry::

        z = 1  : -log p
        z = 0  : v(p) * [ k(p) * (1 - p^q2) / q2 + (1 - k(p)) * (1 - (1 - p)^q3) / q3 ]
        z = -1 : -log(1 - p)

    with ``k(p) = sigmoid(w p + b)`` (how much an unknown is treated as a positive) and
    ``v(p) = exp(-(p - mu)^2 / (2 sigma^2))`` (a confidence weight). Both weights are computed
    on the detached ``p``, as in the authors' code: they re-weight the two robust (generalised
    cross-entropy) terms but are not themselves optimised. ``(1 - p^q)/q`` tends to ``-log p``
    as ``q -> 0`` and ``(1 - (1-p)^q)/q`` is the MAE-like ``p`` at ``q = 1``.
    Chen et al., *Boosting Single Positive Multi-label Classification with Generalized Robust
    Loss*, IJCAI 2024.

    Numerics: the power terms use the same ``+1e-5`` floor as :func:`neg_log`, so the ``q2 -> 0``
    limit is exactly ``neg_log`` and the gradient of ``p^q2`` stays finite at ``p = 0``.
    """
    pos = observed_positive_mask(observed)
    unk = unknown_mask(observed)
    neg = annotated_negative_mask(observed)
    p_const = probs.detach()
    k = torch.sigmoid(w * p_const + b)
    v = torch.exp(-((p_const - mu) ** 2) / (2 * sigma**2))
    positive_like = (1 - (probs + LOG_EPS) ** q2) / q2
    negative_like = (1 - (1 - probs + LOG_EPS) ** q3) / q3
    unknown_loss = v * (k * positive_like + (1 - k) * negative_like)
    loss = pos * neg_log(probs) + unk * unknown_loss + neg * neg_log(1 - probs)
    return loss.mean()


@register_method(
    "gr",
    title="GR",
    summary="generalised robust loss with epoch-scheduled weighting of unknown labels",
    paper=CHEN_2024,
    formula="z=1: -log p; z=0: v(p) [k(p)(1-p^q2)/q2 + (1-k(p))(1-(1-p)^q3)/q3], k = sigmoid(w p + b), v = exp(-(p-mu)^2/(2 sigma^2))",
    comparison=True,
)
class GeneralizedRobustLoss(SPMLLoss):
    """GR loss with linear schedules of ``w``, ``mu`` and ``sigma`` (and ``b``) over the epochs.

    Each scheduled value goes from ``*_start`` at the first epoch to ``*_end`` at the last one
    (see :func:`splml.methods.base.linear_schedule`). The authors' code offsets the schedule by
    its linear-probing epochs; here the schedule spans the whole run of this loss.
    """

    name = "gr"

    def __init__(
        self,
        q2: float = 0.01,
        q3: float = 1.0,
        w_start: float = 0.0,
        w_end: float = 2.0,
        b_start: float = -2.0,
        b_end: float = -2.0,
        mu_start: float = 0.5,
        mu_end: float = 0.8,
        sigma_start: float = 2.0,
        sigma_end: float = 0.5,
    ) -> None:
        super().__init__()
        self.q2 = q2
        self.q3 = q3
        self.w = (w_start, w_end)
        self.b = (b_start, b_end)
        self.mu = (mu_start, mu_end)
        self.sigma = (sigma_start, sigma_end)

    def schedule(self, ctx: LossContext) -> dict[str, float]:
        """The ``w``, ``b``, ``mu``, ``sigma`` in force at ``ctx.epoch``."""
        return {
            name: linear_schedule(start, end, ctx.epoch, ctx.max_epochs)
            for name, (start, end) in {"w": self.w, "b": self.b, "mu": self.mu, "sigma": self.sigma}.items()
        }

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        params = self.schedule(ctx)
        loss = generalized_robust_loss(outputs["logits"].sigmoid(), batch["observed"], q2=self.q2, q3=self.q3, **params)
        logs = {f"gr_{k}": torch.tensor(v, dtype=loss.dtype, device=loss.device) for k, v in params.items()}
        return {"loss": loss, **logs}
