"""ROLE: jointly learn the classifier and a per-(sample, class) label estimate."""

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
)
from splml.methods.epr import expected_positive_regularizer
from splml.methods.papers import COLE_2021
from splml.methods.registry import register_method
from splml.methods.role.store import LabelEstimatorStore


def _known_label_loss(probs: Tensor, observed: Tensor) -> Tensor:
    """``mean_{B x L}([z = 1] * -log p + [z = -1] * -log(1 - p))`` (unknowns contribute 0)."""
    pos = observed_positive_mask(observed)
    neg = annotated_negative_mask(observed)
    return (pos * neg_log(probs) + neg * neg_log(1 - probs)).mean()


def role_loss(f_logits: Tensor, g_logits: Tensor, observed: Tensor, expected_positives: float) -> dict[str, Tensor]:
    """ROLE objective for a batch, symmetric in the classifier ``f`` and the label estimate ``g``.

    With ``f = sigmoid(f_logits)`` (classifier) and ``g = sigmoid(g_logits)`` (the rows of the
    learned N x L label-estimate table for this batch)::

        loss = 1/2 [pos(f) + pos(g)]
             + 1/2 [BCE(f, sg(g)) + BCE(g, sg(f))]
             + 1/2 [R(f) + R(g)]

    ``pos`` is ``-log`` on the annotated positives (and ``-log(1 - .)`` on annotated negatives),
    averaged over B x L; ``BCE(a, sg(b))`` is the soft-target BCE over all B x L entries with the
    other model's output as a stop-gradient target, so each side is taught by the other;
    ``R`` is the expected-positive regulariser with ``K = expected_positives``.
    Cole et al., *Multi-Label Learning from Single Positive Labels*, CVPR 2021 ("ROLE").

    Returns a dict with ``loss`` and its detached parts ``loss_observed``, ``loss_cross``,
    ``loss_reg`` for logging.
    """
    f = f_logits.sigmoid()
    g = g_logits.sigmoid()
    observed_term = 0.5 * (_known_label_loss(f, observed) + _known_label_loss(g, observed))
    cross_term = 0.5 * (soft_bce(f, g.detach()).mean() + soft_bce(g, f.detach()).mean())
    reg_term = 0.5 * (
        expected_positive_regularizer(f, expected_positives) + expected_positive_regularizer(g, expected_positives)
    )
    return {
        "loss": observed_term + cross_term + reg_term,
        "loss_observed": observed_term.detach(),
        "loss_cross": cross_term.detach(),
        "loss_reg": reg_term.detach(),
    }


@register_method(
    "role",
    title="ROLE",
    summary="regularised online label estimation: the classifier and a learned N x L label estimate teach each other",
    paper=COLE_2021,
    formula="1/2 [pos(f) + pos(g)] + 1/2 [BCE(f, sg g) + BCE(g, sg f)] + 1/2 [R(f) + R(g)]",
    stores=(LabelEstimatorStore,),
    comparison=True,
)
class ROLELoss(SPMLLoss):
    """ROLE; the label-estimate table lives in a store callback.

    Extras:
        ``role_g_logits``: float B x L, the label-estimate logits of the batch rows, gathered from the
        N x L table so that they *require grad* (the callback owns the table and its optimiser).
    """

    name = "role"
    requires_extras = ("role_g_logits",)

    def __init__(self, expected_positives: float, estimator_lr_mult: float = 10.0, estimator_seed: int = 0) -> None:
        super().__init__()
        self.expected_positives = float(expected_positives)
        self.estimator_lr_mult = float(estimator_lr_mult)
        self.estimator_seed = int(estimator_seed)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        return [LabelEstimatorStore(num_samples, num_classes, lr_mult=self.estimator_lr_mult, seed=self.estimator_seed)]

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        g_logits = require_extra(batch, "role_g_logits", self.name)
        return role_loss(outputs["logits"], g_logits, batch["observed"], self.expected_positives)
