"""MACL: multi-label-aware contrastive learning for retrieval (a reconstruction).

The method's code is not released; this module rebuilds it from its description only, so it is a
reconstruction, not the authors' implementation. What is specified: label-aware positives
(pairs sharing a label), a pairwise weight from the inverse frequencies of the shared labels
(rare co-occurrences weigh more) normalised to mean 1 over an anchor's positives, and a dynamic
pairwise temperature ``T_ip = tau / (1 + alpha J_ip + beta r_i)``. Choices of this
reconstruction, where the description leaves them open:

* label frequencies are those of the current batch (``n_l`` = rows holding label ``l``, out of
  ``N``), so the loss stays a pure function of the batch;
* the weight of a pair is the mean inverse frequency ``N / n_l`` over its shared labels;
* the anchor's rarity ``r_i`` is the mean of ``1 - n_l / N`` over its labels (in [0, 1));
* the temperature of a non-positive pair is ``tau / (1 + beta r_i)`` (``J = 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from splml.methods.contrastive.base import (
    ContrastiveLoss,
    contrastive_log_prob,
    jaccard_overlap,
    label_matrix,
    positive_pairs,
    shared_label_counts,
    weighted_positive_loss,
)
from splml.methods.papers import MACL
from splml.methods.registry import register_method


def label_rarity(labels: Tensor) -> Tensor:
    """``r_i = mean_{l in Y_i} (1 - n_l / N)`` with batch label counts ``n_l`` (0 for an empty set)."""
    y = labels if labels.is_floating_point() else labels.float()
    frequency = y.mean(dim=0)
    sizes = y.sum(dim=1)
    return torch.where(sizes > 0, (y @ (1.0 - frequency)) / sizes.clamp(min=1), torch.zeros_like(sizes))


def pair_weights(labels: Tensor, positives: Tensor) -> Tensor:
    """``w_ip``: mean of ``N / n_l`` over the shared labels, normalised to mean 1 over each anchor's positives."""
    y = labels if labels.is_floating_point() else labels.float()
    counts = y.sum(dim=0)
    inverse = torch.where(counts > 0, y.shape[0] / counts.clamp(min=1), torch.zeros_like(counts))
    shared = shared_label_counts(y)
    raw = torch.where(positives, ((y * inverse) @ y.T) / shared.clamp(min=1), torch.zeros_like(shared))
    mean = raw.sum(dim=1, keepdim=True) / positives.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(positives, raw / mean.clamp(min=1e-12), torch.zeros_like(raw))


def macl_loss(
    z: Tensor, labels: Tensor, tau: float = 0.1, alpha: float = 0.5, beta: float = 0.5, weighting: bool = True
) -> dict[str, Tensor]:
    """``mean_i -(1/sum_p w_ip) sum_p w_ip log( exp(z_i.z_p/T_ip) / sum_{a != i} exp(z_i.z_a/T_ia) )``.

    Positives ``p``: samples sharing at least one label with the anchor ``i``.
    ``T_ia = tau / (1 + alpha J_ia + beta r_i)`` with ``J`` the Jaccard overlap of the label sets
    and ``r_i`` the anchor's label rarity (:func:`label_rarity`); ``w_ip`` from
    :func:`pair_weights`, or 1 with ``weighting=False``. ``alpha = beta = 0`` and
    ``weighting=False`` give SupCon (Khosla et al., NeurIPS 2020) exactly. MACL (multi-label-aware
    contrastive learning for remote-sensing image retrieval); reconstruction, see the module
    docstring. Returns the loss and ``temperature_mean`` (mean ``T_ip`` over positive pairs, a log).
    """
    y = label_matrix(labels, z)
    positives = positive_pairs(y)
    temperature = tau / (1.0 + alpha * jaccard_overlap(y) + beta * label_rarity(y)[:, None])
    weights = pair_weights(y, positives) if weighting else positives.to(y.dtype)
    loss = weighted_positive_loss(contrastive_log_prob(z, temperature), weights)
    with torch.no_grad():
        mean_t = temperature[positives].mean() if bool(positives.any()) else temperature.new_tensor(tau)
    return {"loss": loss, "temperature_mean": mean_t}


@register_method(
    "macl",
    title="MACL",
    summary="label-aware positives, pair weights from the inverse frequency of the shared labels, pairwise temperature",
    paper=MACL,
    formula="mean_i -1/sum_p w_ip sum_p w_ip log softmax_{a != i}(z_i.z_a / T_ia)_p, T_ia = tau / (1 + alpha J_ia + beta r_i)",
    ablations=("macl_no_weighting", "macl_no_overlap_temperature", "macl_fixed_temperature"),
    reconstruction=True,
)
class MACLLoss(ContrastiveLoss):
    name = "macl"

    def __init__(self, tau: float = 0.1, alpha: float = 0.5, beta: float = 0.5, weighting: bool = True) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"loss.tau must be positive, got {tau}")
        if alpha < 0 or beta < 0:
            raise ValueError(
                f"loss.alpha and loss.beta must be >= 0 (they only lower the temperature), got {alpha}, {beta}"
            )
        self.tau, self.alpha, self.beta, self.weighting = float(tau), float(alpha), float(beta), bool(weighting)

    def loss_fn(self, z: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return macl_loss(z, labels, self.tau, self.alpha, self.beta, self.weighting)
