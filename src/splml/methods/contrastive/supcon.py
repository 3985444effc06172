"""SupCon for multi-label data: positives are the samples sharing at least one label."""

from __future__ import annotations

from torch import Tensor

from splml.methods.contrastive.base import (
    TemperatureContrastiveLoss,
    contrastive_log_prob,
    label_matrix,
    positive_pairs,
    weighted_positive_loss,
)
from splml.methods.papers import KHOSLA_2020
from splml.methods.registry import register_method


def supcon_loss(z: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """``mean_i -(1/|P(i)|) sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) )``.

    Khosla et al., *Supervised Contrastive Learning*, NeurIPS 2020 (``L_out``, the positives
    averaged outside the log). Multi-label positives: ``P(i) = {p != i : Y_i ∩ Y_p ≠ ∅}``.
    ``z``: N x D embeddings (normalised here); ``labels``: N x L boolean label sets; anchors
    without positives are left out of the mean.
    """
    y = label_matrix(labels, z)
    return weighted_positive_loss(contrastive_log_prob(z, tau), positive_pairs(y).to(y.dtype))


@register_method(
    "supcon",
    title="SupCon",
    summary="supervised contrastive loss; positives share at least one label",
    paper=KHOSLA_2020,
    formula="mean_i -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i.z_a / tau)_p",
)
class SupConLoss(TemperatureContrastiveLoss):
    name = "supcon"
    objective = staticmethod(supcon_loss)
