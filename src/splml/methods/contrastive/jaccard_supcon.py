"""SupCon with positives weighted by the Jaccard overlap of the label sets."""

from __future__ import annotations

from torch import Tensor

from splml.methods.contrastive.base import (
    TemperatureContrastiveLoss,
    contrastive_log_prob,
    jaccard_overlap,
    label_matrix,
    off_diagonal,
    weighted_positive_loss,
)
from splml.methods.papers import KHOSLA_2020
from splml.methods.registry import register_method


def jaccard_supcon_loss(z: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """``mean_i -(1/sum_p J_ip) sum_p J_ip log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) )``.

    ``J_ip = |Y_i ∩ Y_p| / |Y_i ∪ Y_p|``: a pair sharing all its labels pulls with weight 1, a
    pair sharing one label of many only a little, and pairs sharing nothing are negatives only.
    The graded-positive generalisation of SupCon (Khosla et al., NeurIPS 2020) used as a
    multi-label baseline; equal to :func:`~splml.methods.contrastive.supcon.supcon_loss` when every label set
    has one element (single positives).
    """
    y = label_matrix(labels, z)
    weights = jaccard_overlap(y) * off_diagonal(y.shape[0], y.device)
    return weighted_positive_loss(contrastive_log_prob(z, tau), weights)


@register_method(
    "jaccard_supcon",
    title="Jaccard-SupCon",
    summary="SupCon with positives weighted by the Jaccard overlap of their label sets",
    paper=KHOSLA_2020,
    formula="mean_i -1/sum_p J_ip sum_p J_ip log softmax_{a != i}(z_i.z_a / tau)_p",
)
class JaccardSupConLoss(TemperatureContrastiveLoss):
    name = "jaccard_supcon"
    objective = staticmethod(jaccard_supcon_loss)
