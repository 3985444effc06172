"""MulSupCon: one anchor per (sample, label) pair, positives share that label."""

from __future__ import annotations

from torch import Tensor

from splml.methods.contrastive.base import TemperatureContrastiveLoss, contrastive_log_prob, label_matrix, off_diagonal
from splml.methods.papers import ZHANG_WU_2024
from splml.methods.registry import register_method


def mulsupcon_loss(z: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """``mean_{(i,l): l in Y_i} -(1/|P_l(i)|) sum_{p in P_l(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) )``.

    Zhang and Wu, *Multi-Label Supervised Contrastive Learning*, AAAI 2024: a sample with
    ``|Y_i|`` labels is ``|Y_i|`` anchors (all with its embedding ``z_i``); anchor ``(i, l)``
    has the positives ``P_l(i) = {p != i : l in Y_p}``. The mean runs over the anchors that have
    a positive, so an image with many labels weighs more than one with a single label. With one
    label per sample (single positives) this is SupCon.
    """
    log_prob = contrastive_log_prob(z, tau)
    y = label_matrix(labels, z)
    pairs = off_diagonal(y.shape[0], y.device).to(y.dtype)
    # For anchor (i, l): sum over p of [l in Y_p] log_prob_ip, and the number of such p.
    sums = (log_prob @ y) * y
    counts = (pairs @ y) * y
    anchors = counts > 0
    if not bool(anchors.any()):
        return log_prob.sum() * 0.0
    return -(sums[anchors] / counts[anchors]).mean()


@register_method(
    "mulsupcon",
    title="MulSupCon",
    summary="one anchor per (image, label); its positives have that label",
    paper=ZHANG_WU_2024,
    formula="mean_{(i,l): l in Y_i} -1/|P_l(i)| sum_{p in P_l(i)} log softmax_{a != i}(z_i.z_a / tau)_p",
)
class MulSupConLoss(TemperatureContrastiveLoss):
    name = "mulsupcon"
    objective = staticmethod(mulsupcon_loss)
