"""Per-sample stores owned by callbacks: one life cycle for every method's memory.

A store is a set of N x ... tensors indexed by the dataset index of a training sample (EMA
scores, heatmaps, corrected labels, learned label estimates). Rules every store follows:

* It lives in a callback, never in the LightningModule's buffers: DDP would broadcast rank 0's
  buffers at every step and overwrite the other ranks' updates.
* Updates are gathered from all ranks (indices and values, in rank order) and the same update
  is applied everywhere, so every rank holds an identical store. Indices repeated by the
  distributed sampler's padding are resolved deterministically: the first occurrence in
  (rank, position) order wins.
* The store is part of the callback's ``state_dict`` and therefore of every Lightning
  checkpoint; a resumed run continues from exactly the saved values.
* Rows the sampler added as padding are not applied, so every sample updates a store exactly
  once per epoch; ``coverage`` counts the updates and, under DDP, a checksum comparison at
  every epoch end fails loudly if the ranks' stores ever differ.
* Stores hold float32 (or integer) tensors whatever the training precision: the floating rows
  of an update are cast to float32 where they enter (:meth:`StoreCallback.gather_updates`), so
  EMA arithmetic never runs in half precision. Under ``16-mixed`` a store that reads gradients
  divides them by the loss scale and skips the steps the optimizer skipped
  (:func:`gradient_scale`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(indices: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """All-gather ``indices`` (B) and row tensors (B x ...) from every rank, in rank order.

    Ranks may hold different batch sizes (the last batch); rows are padded for the collective
    and trimmed afterwards. Returns CPU tensors. Without distributed training it returns the
    inputs (on CPU) unchanged.
    """
    if not distributed_ready():
        return (indices.detach().cpu(), *(v.detach().cpu() for v in values))
    device = indices.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    world = dist.get_world_size()
    local_n = torch.tensor([indices.shape[0]], device=device)
    sizes = [torch.zeros_like(local_n) for _ in range(world)]
    dist.all_gather(sizes, local_n)
    max_n = int(max(s.item() for s in sizes))
    gathered: list[Tensor] = []
    for tensor in (indices, *values):
        t = tensor.detach().to(device)
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        padded = torch.zeros((max_n, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        joined = torch.cat([p[: int(n.item())] for p, n in zip(parts, sizes, strict=True)]).cpu()
        gathered.append(joined.to(tensor.dtype) if tensor.dtype == torch.bool else joined)
    return tuple(gathered)


def first_occurrence(indices: Tensor) -> Tensor:
    """Positions of the first occurrence of every distinct index (stable, deterministic)."""
    idx = indices.cpu().numpy()
    _, first = np.unique(idx, return_index=True)
    return torch.from_numpy(np.sort(first))


def gradient_scale(trainer: Any) -> float | None:
    """The loss scale of ``16-mixed`` training at this moment (None without a gradient scaler).

    Gradients of a scaled backward pass are this many times too large until divided by it. The
    scaler lowers its scale when a step had non-finite gradients and skips that optimizer step.
    """
    plugin = getattr(trainer, "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity without distributed training)."""
    if not distributed_ready():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StoreCallback(L.Callback):
    """Base class of callbacks that own per-sample tensors.

    Subclasses declare their tensors by assigning them into ``self.tensors`` (name -> CPU tensor)
    and implement the hooks they need; the base class provides gathering, checkpointing and the
    helpers to read the training split's full labels for diagnostics.
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        super().__init__()
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.tensors: dict[str, Tensor] = {}
        #: Extra plain state (counters, epochs) that must survive a resume.
        self.meta: dict[str, Any] = {}

    # -- checkpointing ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {
            "tensors": {k: v.clone() for k, v in self.tensors.items()},
            "meta": dict(self.meta),
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if (state_dict["num_samples"], state_dict["num_classes"]) != (self.num_samples, self.num_classes):
            raise ValueError(
                f"{self.state_key}: the checkpoint's store is for {state_dict['num_samples']} samples x "
                f"{state_dict['num_classes']} classes, this run has {self.num_samples} x {self.num_classes}; "
                "resume with the same dataset and labels"
            )
        self.tensors = {k: v.clone() for k, v in state_dict["tensors"].items()}
        self.meta = dict(state_dict["meta"])
        self.on_store_loaded()

    def on_store_loaded(self) -> None:
        """Hook for subclasses that derive caches from the tensors."""

    # -- updates ----------------------------------------------------------------------------
    def gather_updates(self, batch: dict[str, Any], *values: Tensor) -> tuple[Tensor, ...]:
        """Indices and value rows of this step from every rank: padding dropped, deduplicated.

        Floating rows come back in float32 (half-precision outputs are cast here, at the store's
        boundary). Also counts one update per returned index (see :meth:`coverage`).
        """
        values = tuple(v.float() if v.is_floating_point() else v for v in values)
        idx = self.batch_indices(batch)
        padded = batch.get("padded")
        padded = torch.zeros_like(idx, dtype=torch.bool) if padded is None else torch.as_tensor(padded).bool()
        idx, padded, *rows = gather_rows(idx, padded.to(idx.device), *values)
        real = torch.nonzero(~padded.bool()).flatten()
        idx, rows = idx[real], [r[real] for r in rows]
        keep = first_occurrence(idx)
        idx, rows = idx[keep], [r[keep] for r in rows]
        counts = self.tensors.setdefault("update_count", torch.zeros(self.num_samples, dtype=torch.int32))
        counts[idx] += 1
        return (idx, *rows)

    def coverage(self) -> Tensor:
        """How many times each sample has updated this store (N, int)."""
        return self.tensors.get("update_count", torch.zeros(self.num_samples, dtype=torch.int32))

    def checksum(self) -> str:
        """A digest of every tensor of the store (identical on every rank, or something is wrong)."""
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(self.tensors):
            digest.update(name.encode())
            digest.update(self.tensors[name].contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if distributed_ready():
            sums: list[str | None] = [None] * dist.get_world_size()
            dist.all_gather_object(sums, self.checksum())
            if len(set(sums)) != 1:
                raise RuntimeError(
                    f"{self.state_key}: the per-sample store differs between ranks after epoch "
                    f"{trainer.current_epoch} (checksums {sums}); results would be unreliable"
                )

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def batch_indices(batch: dict[str, Any]) -> Tensor:
        return batch["index"].long()

    @staticmethod
    def train_targets(trainer: L.Trainer) -> Tensor | None:
        """Full training labels (N x L) when the datamodule has them, for diagnostics only."""
        dm = getattr(trainer, "datamodule", None)
        datasets = getattr(dm, "datasets", None) or {}
        train = datasets.get("train")
        targets = getattr(train, "targets", None)
        return torch.as_tensor(np.asarray(targets), dtype=torch.float32) if targets is not None else None

    @staticmethod
    def train_observed(trainer: L.Trainer) -> Tensor:
        dm = getattr(trainer, "datamodule", None)
        datasets = getattr(dm, "datasets", None) or {}
        if "train" not in datasets:
            raise RuntimeError("per-sample stores need a datamodule exposing datasets['train'].observed")
        return torch.as_tensor(np.asarray(datasets["train"].observed), dtype=torch.float32)

    def check_size(self, trainer: L.Trainer) -> None:
        observed = self.train_observed(trainer)
        if tuple(observed.shape) != (self.num_samples, self.num_classes):
            raise ValueError(
                f"{self.state_key} was built for {self.num_samples} x {self.num_classes} but the training "
                f"split has labels of shape {tuple(observed.shape)}"
            )

    @staticmethod
    def extras(batch: dict[str, Any]) -> dict[str, Any]:
        return batch.setdefault("extras", {})


def precision_recall(selected: Tensor, truth: Tensor) -> tuple[float, float]:
    """Precision and recall (percent) of a boolean selection against boolean truth."""
    tp = float((selected & truth).sum())
    n_sel, n_true = float(selected.sum()), float(truth.sum())
    precision = 100.0 * tp / n_sel if n_sel else float("nan")
    recall = 100.0 * tp / n_true if n_true else float("nan")
    return precision, recall
