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
* which temperature the softmax denominator uses (``denominator``):

  - ``"positive"`` (default): the term of positive ``p`` is a softmax over every candidate ``a``
    at that positive's temperature, ``log( exp(z_i.z_p / T_ip) / sum_a exp(z_i.z_a / T_ip) )``;
  - ``"pair"``: every candidate at its own pair's temperature,
    ``log( exp(z_i.z_p / T_ip) / sum_a exp(z_i.z_a / T_ia) )`` with ``T_ia = tau / (1 + beta r_i)``
    for a non-positive ``a`` (``J = 0``): the description's formula read literally.

  With ``"pair"`` a positive (``J > 0``) is sharper than a negative in the same softmax whatever
  the embeddings, so raising every similarity together lowers the loss: on the synthetic
  benchmark the projection collapses to one vector (experiments/retrieval/README.md, with the
  diagnosis). With ``"positive"`` each term is a proper softmax at one temperature, so a collapse
  gains nothing (every term is ``-log(N - 1)``, as in SupCon); the overlap still sharpens the
  positives that share more labels. The two agree whenever ``alpha = 0`` (the temperature is then
  the anchor's, the same for every candidate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from splml.methods.contrastive.base import (
    ContrastiveLoss,
    contrastive_log_prob,
    jaccard_overlap,
    label_matrix,
    off_diagonal,
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


#: ``denominator`` options: the temperature the candidates of a positive's softmax are divided by.
DENOMINATORS = ("positive", "pair")


def positive_temperature_log_prob(z: Tensor, temperature: Tensor, positives: Tensor) -> Tensor:
    """``log( exp(z_i.z_p / T_ip) / sum_{a != i} exp(z_i.z_a / T_ip) )`` for every positive pair (N x N, 0 elsewhere).

    Each positive's softmax runs over all candidates at that positive's temperature. Positives of
    one anchor with the same temperature share their normaliser, so the cost is one row of
    similarities per distinct (anchor, temperature), not one per positive pair.
    """
    z = F.normalize(label_matrix(z, z), dim=-1)
    similarity = z @ z.T
    n = z.shape[0]
    anchor, positive = torch.nonzero(positives, as_tuple=True)
    if anchor.numel() == 0:
        return similarity * 0.0
    inverse = (1.0 / temperature[anchor, positive]).to(similarity.dtype)
    keys = torch.stack([anchor.to(torch.float64), inverse.to(torch.float64)], dim=1)
    distinct, which = torch.unique(keys, dim=0, return_inverse=True)
    rows = distinct[:, 0].long()
    scaled = similarity[rows] * distinct[:, 1:].to(similarity.dtype)
    scaled = scaled.masked_fill(~off_diagonal(n, z.device)[rows], float("-inf"))
    log_norm = torch.logsumexp(scaled, dim=1)
    values = similarity[anchor, positive] * inverse - log_norm[which]
    return similarity.new_zeros(n, n).index_put((anchor, positive), values)


def macl_loss(
    z: Tensor,
    labels: Tensor,
    tau: float = 0.1,
    alpha: float = 0.5,
    beta: float = 0.5,
    weighting: bool = True,
    denominator: str = "positive",
) -> dict[str, Tensor]:
    """``mean_i -(1/sum_p w_ip) sum_p w_ip log( exp(z_i.z_p/T_ip) / sum_{a != i} exp(z_i.z_a/T) )``.

    Positives ``p``: samples sharing at least one label with the anchor ``i``.
    ``T_ia = tau / (1 + alpha J_ia + beta r_i)`` with ``J`` the Jaccard overlap of the label sets
    and ``r_i`` the anchor's label rarity (:func:`label_rarity`); ``w_ip`` from
    :func:`pair_weights`, or 1 with ``weighting=False``. The denominator's ``T`` is ``T_ip`` for
    every candidate (``denominator="positive"``) or each candidate's own ``T_ia``
    (``"pair"``; see the module docstring). ``alpha = beta = 0`` and ``weighting=False`` give
    SupCon (Khosla et al., NeurIPS 2020) exactly. MACL (multi-label-aware contrastive learning for
    remote-sensing image retrieval); reconstruction, see the module docstring. Returns the loss
    and ``temperature_mean`` (mean ``T_ip`` over positive pairs, a log).
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"loss.denominator must be one of {DENOMINATORS}, got {denominator!r}")
    y = label_matrix(labels, z)
    positives = positive_pairs(y)
    temperature = tau / (1.0 + alpha * jaccard_overlap(y) + beta * label_rarity(y)[:, None])
    weights = pair_weights(y, positives) if weighting else positives.to(y.dtype)
    if denominator == "positive":
        log_prob = positive_temperature_log_prob(z, temperature, positives)
    else:
        log_prob = contrastive_log_prob(z, temperature)
    loss = weighted_positive_loss(log_prob, weights)
    with torch.no_grad():
        mean_t = temperature[positives].mean() if bool(positives.any()) else temperature.new_tensor(tau)
    return {"loss": loss, "temperature_mean": mean_t}


@register_method(
    "macl",
    title="MACL",
    summary="label-aware positives, pair weights from the inverse frequency of the shared labels, pairwise temperature",
    paper=MACL,
    formula="mean_i -1/sum_p w_ip sum_p w_ip log softmax_{a != i}(z_i.z_a / T_ip)_p, T_ip = tau / (1 + alpha J_ip + beta r_i)",
    ablations=("macl_no_weighting", "macl_no_overlap_temperature", "macl_fixed_temperature", "macl_pair_denominator"),
    reconstruction=True,
)
class MACLLoss(ContrastiveLoss):
    name = "macl"

    def __init__(
        self,
        tau: float = 0.1,
        alpha: float = 0.5,
        beta: float = 0.5,
        weighting: bool = True,
        denominator: str = "positive",
        gather_across_processes: bool = True,
    ) -> None:
        super().__init__(gather_across_processes)
        if tau <= 0:
            raise ValueError(f"loss.tau must be positive, got {tau}")
        if alpha < 0 or beta < 0:
            raise ValueError(
                f"loss.alpha and loss.beta must be >= 0 (they only lower the temperature), got {alpha}, {beta}"
            )
        if denominator not in DENOMINATORS:
            raise ValueError(f"loss.denominator must be one of {DENOMINATORS}, got {denominator!r}")
        self.tau, self.alpha, self.beta, self.weighting = float(tau), float(alpha), float(beta), bool(weighting)
        self.denominator = denominator

    def loss_fn(self, z: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return macl_loss(z, labels, self.tau, self.alpha, self.beta, self.weighting, self.denominator)
