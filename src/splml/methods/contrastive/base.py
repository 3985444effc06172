"""What the multi-label contrastive losses (``task=retrieval``) share.

They follow the :class:`~splml.methods.base.SPMLLoss` contract (``forward(outputs, batch, ctx)``)
but read the L2-normalised projection ``outputs["z"]`` instead of logits, and the label *sets*
of the batch: positives are found among the other samples of the batch. ``z`` is ``B x D``, or
``B x V x D`` when the training split delivers ``V`` augmented views per image
(``task.train_views``): the ``B * V`` views are then the anchors, each with the labels of its
image, so the other view of the same image is one more positive (it shares every label).

Labels are the *observed* ones (``batch["observed"] == 1``): with ``labels=full`` the full label
sets, with a single-positive mode (``labels=random``, ``dominant``, ``manual``) the one annotated
label, so two images are positives when their annotated labels are equal. The latter is this
suite's extension to single-positive training; the papers train on full labels.

Anchors without any positive in the batch contribute nothing (they are left out of the mean);
a batch without any positive pair gives a zero loss that still carries a gradient graph.

Under DDP (``gather_across_processes``, on by default) every process contrasts the union of all
processes' batches, not only its own: the embeddings and labels are all-gathered (padded
duplicates of the distributed sampler left out), every process evaluates the loss of the whole
union batch, and the gradient of the gathered embeddings flows back to the process that computed
them, summed over the processes. After DDP averages the parameter gradients, the update is
exactly that of one process training on the union batch (same loss, same gradient); the loss
is the same whatever the number of processes the global batch is split over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss
from splml.methods.store import distributed_ready


def flatten_views(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(N x D embeddings, N x L labels)`` with ``N = B * V``: views of one image stay adjacent."""
    if z.ndim == 2:
        return z, labels
    if z.ndim != 3 or z.shape[0] != labels.shape[0]:
        raise ValueError(f"embeddings must be B x D or B x V x D for B = {labels.shape[0]}, got {tuple(z.shape)}")
    views = z.shape[1]
    return z.reshape(-1, z.shape[-1]), labels.repeat_interleave(views, dim=0)


def label_matrix(labels: Tensor, z: Tensor) -> Tensor:
    """The label sets as 0/1 floats in the precision the loss is computed in (that of ``z``, at least float32)."""
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    return labels.to(dtype)


def off_diagonal(n: int, device: torch.device) -> Tensor:
    """Boolean N x N mask, True except on the diagonal (an anchor is never its own pair)."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def contrastive_log_prob(z: Tensor, temperature: Tensor | float) -> Tensor:
    """``log( exp(z_i.z_a / T_ia) / sum_{a' != i} exp(z_i.z_a' / T_ia') )`` for every pair (N x N).

    ``z`` is normalised here (cosine similarity whatever the input scale); ``temperature`` is a
    scalar or an N x N matrix of pairwise temperatures. The diagonal (i = a) is excluded from the
    denominator and set to 0 in the result, so that masked sums can multiply it freely.
    """
    z = F.normalize(label_matrix(z, z), dim=-1)  # half precision would overflow exp(1/T)
    logits = (z @ z.T) / temperature
    mask = off_diagonal(z.shape[0], z.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return log_prob.masked_fill(~mask, 0.0)


@torch.no_grad()
def mean_similarity(z: Tensor) -> Tensor:
    """Mean cosine similarity of the distinct pairs of rows of ``z`` (N >= 2): near 1, the projection has collapsed."""
    n = z.shape[0]
    z = F.normalize(label_matrix(z, z), dim=-1)
    total = z.sum(dim=0)
    return ((total @ total - (z * z).sum()) / (n * (n - 1))).to(torch.float32)


def weighted_positive_loss(log_prob: Tensor, weights: Tensor) -> Tensor:
    """``mean_i [ -(1 / sum_p w_ip) sum_p w_ip log_prob_ip ]`` over anchors with ``sum_p w_ip > 0``.

    ``weights`` (N x N, zero on the diagonal and for non-positives) say which pairs are positives
    and how much each counts; with 0/1 weights this is SupCon's average over the positives.
    """
    total = weights.sum(dim=1)
    anchors = total > 0
    if not bool(anchors.any()):
        return log_prob.sum() * 0.0  # no positive pair in the batch: zero, but differentiable
    per_anchor = -(weights * log_prob).sum(dim=1)[anchors] / total[anchors]
    return per_anchor.mean()


def shared_label_counts(labels: Tensor) -> Tensor:
    """``|Y_i ∩ Y_p|`` for every pair (N x N float)."""
    y = labels if labels.is_floating_point() else labels.float()
    return y @ y.T


def jaccard_overlap(labels: Tensor) -> Tensor:
    """``J_ip = |Y_i ∩ Y_p| / |Y_i ∪ Y_p|`` for every pair (N x N; 0 when both sets are empty)."""
    y = labels if labels.is_floating_point() else labels.float()
    shared = y @ y.T
    sizes = y.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - shared
    return torch.where(union > 0, shared / union.clamp(min=1), torch.zeros_like(shared))


def positive_pairs(labels: Tensor) -> Tensor:
    """Boolean N x N: the two samples share at least one label (and are not the same row)."""
    return (shared_label_counts(labels) > 0) & off_diagonal(labels.shape[0], labels.device)


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of equal-shaped tensors along dim 0, in rank order, differentiable.

    The backward pass sums the gradient of the gathered tensor over the processes (every process
    computed a loss from it) and returns each process the rows it contributed.
    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_union_batch(z: Tensor, labels: Tensor, padded: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Every process's ``z`` (B x ... , with gradients) and ``labels`` (B x L), joined in rank order.

    Processes may hold different batch sizes (the last batch): rows are padded for the collective
    and trimmed after it. Rows flagged ``padded`` (the distributed sampler's duplicates, which
    equalise the ranks' lengths) are left out. Without distributed training the inputs are
    returned, less their padded rows.
    """
    real = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    if padded is not None:
        real = ~torch.as_tensor(padded, device=z.device).bool()
    if not distributed_ready():
        return (z, labels) if bool(real.all()) else (z[real], labels[real])
    device = z.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([z.shape[0]], device=device))
    counts = [int(n.item()) for n in sizes]
    most = max(counts)
    missing = most - z.shape[0]

    def pad(t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros((missing, *t.shape[1:]))]) if missing else t

    joined_z = _GatherWithGradient.apply(pad(z.to(device)))
    # The labels with the "real row" flag in front, as bytes: no gradient, one collective.
    rows = pad(torch.cat([real[:, None], labels.bool()], dim=1).to(device, torch.uint8))
    parts = [torch.empty_like(rows) for _ in counts]
    dist.all_gather(parts, rows)
    keep = torch.cat([torch.arange(k * most, k * most + n, device=device) for k, n in enumerate(counts)])
    joined_z, joined_rows = joined_z[keep], torch.cat(parts)[keep].bool()
    real_rows = joined_rows[:, 0]
    return joined_z[real_rows], joined_rows[real_rows, 1:].to(labels.dtype)


class ContrastiveLoss(SPMLLoss):
    """Base of the retrieval losses: ``loss_fn(z, labels)`` on the flattened views of the batch.

    Subclasses set ``name`` and implement :meth:`loss_fn` with their formula's options, and pass
    ``gather_across_processes`` on (see the module docstring: under DDP the loss is that of the
    union of every process's batch; false contrasts each process's own batch only).
    """

    task = "retrieval"

    def __init__(self, gather_across_processes: bool = True) -> None:
        super().__init__()
        self.gather_across_processes = bool(gather_across_processes)

    def loss_fn(self, z: Tensor, labels: Tensor) -> Tensor | dict[str, Tensor]:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} does not define loss_fn(z, labels)")

    def forward(
        self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext
    ) -> Tensor | dict[str, Tensor]:
        if "z" not in outputs:
            raise KeyError(
                f"loss {self.name!r} reads the projection 'z' of the retrieval model, but the model returned "
                f"{sorted(outputs)}; contrastive losses need task=retrieval"
            )
        z, labels = outputs["z"], batch["observed"] > 0.5
        if self.gather_across_processes:
            z, labels = gather_union_batch(z, labels, batch.get("padded"))
        z, labels = flatten_views(z, labels)
        result = self.loss_fn(z, labels)
        result = dict(result) if isinstance(result, dict) else {"loss": result}
        if z.shape[0] > 1:
            result["similarity_mean"] = mean_similarity(z)
        return result


class TemperatureContrastiveLoss(ContrastiveLoss):
    """A contrastive loss whose only option is the temperature ``tau``: ``objective(z, labels, tau)``.

    Subclasses set ``name`` and ``objective`` (the pure loss function of their module).
    """

    objective: ClassVar[Callable[[Tensor, Tensor, float], Tensor]]

    def __init__(self, tau: float = 0.1, gather_across_processes: bool = True) -> None:
        super().__init__(gather_across_processes)
        if tau <= 0:
            raise ValueError(f"loss.tau must be positive, got {tau}")
        self.tau = float(tau)

    def loss_fn(self, z: Tensor, labels: Tensor) -> Tensor:
        return type(self).objective(z, labels, self.tau)
