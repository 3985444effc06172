"""SCL's per-sample heatmap store: the Lightning callback that fills ``heatmap_targets``.

Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
Single-Label Annotations*, WACV 2023. Every training sample keeps, per class, a W x W heatmap
(W = 2G) of where in the original image the class has been seen; :mod:`splml.methods.scl.geometry`
warps it to each training view and back. This module owns the life cycle: creation at the first
batch, targets before the forward, EMA updates after it, diagnostics and the epoch figure
(:mod:`splml.methods.scl.figures`), checkpoints.

Storage (uint8, 0..255 encodes 0..1), initialised 255 at the annotated class, 0 elsewhere:

* full: N x L x W x W bytes (about 8 GB for COCO at 448 px);
* ``topk=k``: N x k x W x W maps plus N x k class ids (int64), i.e. N * k * (W^2 + 8) bytes. The
  tracked classes of a sample are its annotated class(es), then the highest-scoring other classes
  of its first forward in or after epoch ``topk_from_epoch`` (the paper, at ImageNet scale: the 10
  top-scoring classes after the warm-up; the configs set it to the end of the linear probe). Until
  then only the annotated maps are updated. Untracked classes have an all-zero target, which is
  what the full store would hold for a class the model never fires on;
* ``memmap_dir``: the maps live in a memory-mapped file (:mod:`splml.methods.scl.storage`), read
  and written by row index only, so the store may exceed RAM; checkpoints then hold a reference
  to a checksummed snapshot file, not the array.

Distributed training: each rank computes the updated rows of its own samples, the rows are
gathered through the store base (:meth:`StoreCallback.gather_updates`, rank order) and every
rank writes the same bytes, so the stores stay bit-identical; rows the sampler added as padding
are never written and a repeated index keeps its first occurrence, so each sample updates its
heatmaps exactly once per epoch (``coverage``).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from splml.loggers import log_figure
from splml.methods.scl.figures import plot_heatmaps
from splml.methods.scl.geometry import backward_warp, crop_boxes_in_cells, ema_update, forward_warp
from splml.methods.scl.storage import CHUNK_BYTES, MemmapFile
from splml.methods.store import StoreCallback


class HeatmapStore(StoreCallback):
    """Owns the per-sample heatmaps of SCL (N x L x W x W uint8; top-k classes or memory-mapped on request).

    Fills ``batch["extras"]["heatmap_targets"]`` before every training forward.

    ``grid_size`` (G) and ``image_size`` (S) are inferred from the first training batch when not
    given (G by one no-grad forward of one image in eval mode, because the target is needed
    before the first forward). Storage modes: the module docstring; geometry: :mod:`splml.methods.scl.geometry`.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        momentum: float = 0.8,
        grid_size: int | None = None,
        image_size: int | None = None,
        topk: int | None = None,
        memmap_dir: str | None = None,
        log_diagnostics: bool = True,
        plot_every_n_epochs: int = 1,
        plot_num_samples: int = 4,
        topk_from_epoch: int = 0,
    ) -> None:
        super().__init__(num_samples, num_classes)
        self.plot_every_n_epochs = int(plot_every_n_epochs)
        self.plot_num_samples = int(plot_num_samples)
        if not 0 <= momentum <= 1:
            raise ValueError(f"heatmap momentum must be in [0, 1], got {momentum}")
        if topk is not None and not 1 <= topk <= num_classes:
            raise ValueError(f"heatmap topk must be in [1, {num_classes}] (the number of classes), got {topk}")
        if grid_size is not None and grid_size < 1:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        self.momentum = float(momentum)
        self.grid_size_arg = grid_size
        self.image_size_arg = image_size
        self.topk = topk
        self.topk_from_epoch = int(topk_from_epoch)
        self.memmap_dir = None if memmap_dir is None else Path(memmap_dir).expanduser().resolve()
        self.log_diagnostics = log_diagnostics
        #: The disk-backed maps (memmap mode only).
        self.memmap = None if self.memmap_dir is None else MemmapFile(self.memmap_dir)
        self._observed: Tensor | None = None
        self._global_step = 0
        self._stage: str | None = None
        self._pending_snapshot: dict[str, Any] | None = None

    # -- sizes ------------------------------------------------------------------------------
    @staticmethod
    def _sample_bytes(num_classes: int, grid_size: int, topk: int | None) -> int:
        cells = (2 * grid_size) ** 2
        return num_classes * cells if topk is None else topk * (cells + 8)

    @classmethod
    def estimate_bytes(cls, num_samples: int, num_classes: int, grid_size: int, topk: int | None = None) -> int:
        """Store size in bytes: ``N * L * W^2`` (full) or ``N * k * (W^2 + 8)`` (top-k), W = 2G."""
        return int(num_samples) * cls._sample_bytes(int(num_classes), int(grid_size), topk)

    def bytes_per_sample(self) -> int:
        """Bytes one training sample costs in this store (needs G: given or seen in a batch)."""
        grid = self.meta.get("grid_size", self.grid_size_arg)
        if grid is None:
            raise ValueError("the heatmap size is unknown until the first training batch; pass grid_size")
        return self._sample_bytes(self.num_classes, int(grid), self.topk)

    @property
    def grid_size(self) -> int | None:
        return self.meta.get("grid_size", self.grid_size_arg)

    @property
    def width(self) -> int | None:
        return self.meta.get("width")

    @property
    def heatmaps(self) -> Tensor | None:
        """N x C x W x W uint8 (C = L, or k with top-k); memory-mapped in memmap mode."""
        return self.memmap.tensor if self.memmap is not None else self.tensors.get("maps")

    @property
    def classes(self) -> Tensor | None:
        """Top-k mode: N x k tracked class ids (-1 = slot not chosen yet); None otherwise."""
        return self.tensors.get("classes")

    @property
    def observed(self) -> Tensor | None:
        """The annotated entries (bool N x L) read at the first training batch; None before."""
        return self._observed

    @property
    def live_path(self) -> Path:
        """This rank's live memmap file (ranks > 0 use a sub-folder: each process owns its file)."""
        if self.memmap is None:
            raise ValueError("live_path only exists in memmap mode")
        return self.memmap.live_path

    def _shape(self) -> tuple[int, int, int, int]:
        width = int(self.meta["width"])
        return (self.num_samples, self.topk or self.num_classes, width, width)

    def merged_with(self, other: StoreCallback) -> HeatmapStore:
        """Two loss parts asking for the heatmap store share one, if they agree on its settings."""
        assert isinstance(other, HeatmapStore)
        mine = (self.topk, self.topk_from_epoch, self.memmap_dir, self.grid_size_arg, self.image_size_arg)
        theirs = (other.topk, other.topk_from_epoch, other.memmap_dir, other.grid_size_arg, other.image_size_arg)
        if not math.isclose(self.momentum, other.momentum) or mine != theirs:
            raise ValueError("two parts of the loss ask for heatmap stores with different settings")
        return self

    # -- creation ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Write memory-mapped pages to disk (no-op in RAM mode)."""
        if self.memmap is not None:
            self.memmap.flush()

    def _initial_classes(self, annotated: Tensor) -> Tensor:
        """Top-k slots before any update: annotated classes (ascending), then -1 (not chosen)."""
        k = int(self.topk or 0)
        ids = torch.arange(self.num_classes)
        out = torch.full((annotated.shape[0], k), -1, dtype=torch.long)
        # In chunks of rows: the int64 keys of all N x L entries at once would be 8 bytes per entry
        # (10 GB for ImageNet). Keys are distinct, so the k smallest come out in a unique order.
        step = max(1, CHUNK_BYTES // (16 * self.num_classes))
        for start in range(0, annotated.shape[0], step):
            chunk = annotated[start : start + step]
            order = torch.topk(torch.where(chunk, ids, ids + self.num_classes), k, dim=1, largest=False).indices
            out[start : start + step] = torch.where(chunk.gather(1, order), order, torch.full_like(order, -1))
        return out

    def _create(self, grid_size: int, image_hw: tuple[int, int]) -> None:
        """Allocate the store and write 255 at the annotated entries (only those are touched)."""
        assert self._observed is not None
        self.meta.update(
            grid_size=int(grid_size),
            width=2 * int(grid_size),
            image_size=[int(image_hw[0]), int(image_hw[1])],
            topk=self.topk,
            memmap=self.memmap_dir is not None,
            updates=0,
        )
        annotated = self._observed
        if self.topk is None:
            positions = annotated.nonzero()
        else:
            self.tensors["classes"] = self._initial_classes(annotated)
            positions = (self.tensors["classes"] >= 0).nonzero()
        if self.memmap is not None:
            self.memmap.open(self._shape(), "w+")
        else:
            self.tensors["maps"] = torch.zeros(self._shape(), dtype=torch.uint8)
        store = self.heatmaps
        assert store is not None
        per_pair = int(self.meta["width"]) ** 2
        step = max(1, CHUNK_BYTES // per_pair)
        for start in range(0, positions.shape[0], step):
            rows, cols = positions[start : start + step].unbind(1)
            store[rows, cols] = 255
        self.flush()

    @staticmethod
    def _probe_grid_size(pl_module: Any, image: Tensor) -> int:
        """G from one no-grad forward of one image with every module in eval mode.

        Each module's own mode is restored afterwards (a frozen BatchNorm stays frozen), and eval
        mode keeps BatchNorm statistics untouched, so the probe leaves no trace on training.
        """
        modules = list(pl_module.modules()) if hasattr(pl_module, "modules") else []
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.training = False
            with torch.no_grad():
                out = pl_module(image[:1])
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.training = mode
        if not isinstance(out, dict) or "maps" not in out:
            raise RuntimeError("the heatmap store (SCL) needs outputs['maps']: use a model with the spatial head")
        return int(out["maps"].shape[-1])

    def _attach(self, trainer: L.Trainer, pl_module: Any, batch: dict[str, Any]) -> None:
        """Read the annotations once per run; create (or finish restoring) the store lazily."""
        if self._observed is None:
            self.check_size(trainer)
            self._observed = self.train_observed(trainer) > 0.5
        if self._pending_snapshot is not None:
            snapshot, self._pending_snapshot = self._pending_snapshot, None
            self._restore_snapshot(snapshot)
        if self.heatmaps is not None:
            return
        if self.image_size_arg is not None:
            image_hw = (int(self.image_size_arg), int(self.image_size_arg))
        elif "image_size" in self.meta:
            image_hw = tuple(self.meta["image_size"])
        else:
            image_hw = tuple(int(s) for s in batch["image"].shape[-2:])
        grid = self.grid_size
        if grid is None:
            grid = self._probe_grid_size(pl_module, batch["image"])
        self._create(int(grid), image_hw)

    def _boxes(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        image_hw = (int(self.meta["image_size"][0]), int(self.meta["image_size"][1]))
        size = int(batch["index"].shape[0])
        return crop_boxes_in_cells(batch.get("aug"), size, image_hw, int(self.meta["width"]), device)

    # -- hooks ------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stage = stage

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._attach(trainer, pl_module, batch)
        store = self.heatmaps
        assert store is not None
        device = pl_module.device
        idx = self.batch_indices(batch).cpu()
        boxes, hflip, vflip = self._boxes(batch, device)
        rows = store[idx].to(device=device, dtype=torch.float32)
        warped = forward_warp(rows, boxes, hflip, vflip, int(self.meta["grid_size"])) / 255.0
        classes = self.classes
        if classes is not None:
            warped = self._scatter_classes(warped, classes[idx].to(device))
        self.extras(batch)["heatmap_targets"] = warped

    def _scatter_classes(self, tracked: Tensor, classes: Tensor) -> Tensor:
        """B x k maps of the tracked classes -> B x L maps, zero for untracked classes."""
        b, _, g, _ = tracked.shape
        full = tracked.new_zeros(b, self.num_classes + 1, g, g)
        slot = torch.where(classes >= 0, classes, torch.full_like(classes, self.num_classes))
        full.scatter_(1, slot[:, :, None, None].expand_as(tracked), tracked)
        return full[:, : self.num_classes]

    def _choose_classes(self, current: Tensor, probs: Tensor) -> Tensor:
        """Fill the unchosen (-1) slots with the highest-probability non-annotated classes.

        Filled slots are always a prefix (annotated classes, see ``_initial_classes``), so the
        maps of those slots stay aligned with their class. A stable sort breaks ties by class id
        so every rank and every re-run picks the same classes.
        """
        b, k = current.shape
        filled = current >= 0
        taken = torch.zeros(b, self.num_classes + 1, dtype=torch.bool, device=current.device)
        taken.scatter_(1, torch.where(filled, current, torch.full_like(current, self.num_classes)), True)
        keys = probs.masked_fill(taken[:, : self.num_classes], -math.inf)
        ranked = torch.sort(keys, dim=1, descending=True, stable=True).indices
        slots = torch.arange(k, device=current.device)[None, :]
        source = (slots - filled.sum(1, keepdim=True)).clamp_min(0)
        return torch.where(filled, current, ranked.gather(1, source))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if outputs is None or "outputs" not in outputs:
            return
        self._attach(trainer, pl_module, batch)
        store = self.heatmaps
        assert store is not None
        model_out = outputs["outputs"]
        if "maps" not in model_out:
            raise RuntimeError("the heatmap store (SCL) needs outputs['maps']: use a model with the spatial head")
        maps = model_out["maps"].float()  # logits; the sigmoid is applied to the maps that are kept
        if maps.shape[-1] != self.meta["grid_size"] or maps.shape[-2] != self.meta["grid_size"]:
            raise ValueError(
                f"score maps are {tuple(maps.shape[-2:])} but the heatmap store was built for "
                f"G = {self.meta['grid_size']}; set grid_size to the model's map size"
            )
        device = maps.device
        idx = self.batch_indices(batch).cpu()
        boxes, hflip, vflip = self._boxes(batch, device)
        old = store[idx].to(device)
        classes = self.classes
        if classes is None:
            values, visible = backward_warp(maps.sigmoid(), boxes, hflip, vflip, int(self.meta["width"]))
            rows = ema_update(old, values, visible, self.momentum)
            self.apply_rows(*self.gather_updates(batch, rows))
        else:
            logits = model_out.get("logits")
            probs = logits.float().sigmoid() if logits is not None else maps.sigmoid().mean(dim=(-2, -1))
            chosen = classes[idx].to(device)
            if int(getattr(trainer, "current_epoch", 0)) >= self.topk_from_epoch:
                chosen = self._choose_classes(chosen, probs)
            slots = chosen.clamp_min(0)[:, :, None, None]
            tracked = maps.gather(1, slots.expand(-1, -1, *maps.shape[-2:])).sigmoid()  # k of the L maps
            values, visible = backward_warp(tracked, boxes, hflip, vflip, int(self.meta["width"]))
            # Slots not chosen yet (before topk_from_epoch) keep their zeros.
            rows = ema_update(old, values, visible & (chosen >= 0)[:, :, None, None], self.momentum)
            self.apply_rows(*self.gather_updates(batch, rows, chosen))
        self._global_step = int(getattr(trainer, "global_step", self._global_step))

    def apply_rows(self, indices: Tensor, rows: Tensor, classes: Tensor | None = None) -> None:
        """Write the rows (and top-k classes) returned by :meth:`gather_updates`.

        That gather has already dropped padding rows and repeated indices, and counted the updates.
        """
        store = self.heatmaps
        assert store is not None
        idx = indices.long().cpu()
        store[idx] = rows.cpu().to(torch.uint8)
        if classes is not None:
            self.tensors["classes"][idx] = classes.cpu().long()
        self.meta["updates"] = int(self.meta.get("updates", 0)) + 1

    # -- per-class means (diagnostics) --------------------------------------------------------
    def class_means(self, sample_indices: Tensor | None = None) -> Tensor:
        """Mean heatmap value in [0, 1] per (sample, class), N' x L, read in bounded chunks.

        Untracked classes of the top-k store count as 0, the target the loss sees for them.
        """
        store = self.heatmaps
        if store is None:
            raise ValueError("the heatmap store has not been created yet")
        indices = torch.arange(self.num_samples) if sample_indices is None else torch.as_tensor(sample_indices).long()
        step = max(1, CHUNK_BYTES // max(1, store[0].numel()))
        parts = []
        for start in range(0, indices.shape[0], step):
            chunk = indices[start : start + step]
            means = store[chunk].float().mean(dim=(-2, -1)) / 255.0
            if self.classes is not None:
                means = self._scatter_classes(means[:, :, None, None], self.classes[chunk])[:, :, 0, 0]
            parts.append(means)
        return torch.cat(parts) if parts else torch.zeros(0, self.num_classes)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._global_step = int(getattr(trainer, "global_step", self._global_step))
        self.flush()
        super().on_train_epoch_end(trainer, pl_module)
        if not self.log_diagnostics or self.heatmaps is None:
            return
        if self._observed is None:
            self._observed = self.train_observed(trainer) > 0.5
        truth = self._train_target_array(trainer)
        for name, value in self.diagnostic_means(truth).items():
            if math.isfinite(value):
                pl_module.log(name, value, sync_dist=False)
        if truth is not None and self._should_plot(trainer):
            self._plot_epoch(trainer, truth)

    @staticmethod
    def _train_target_array(trainer: L.Trainer) -> np.ndarray | None:
        """The training split's full labels as the dataset holds them (no N x L copy), or None."""
        train = (getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}).get("train")
        return None if getattr(train, "targets", None) is None else np.asarray(train.targets)

    def diagnostic_means(self, truth: np.ndarray | Tensor | None) -> dict[str, float]:
        """Mean stored heatmap value (in [0, 1]) of the annotated, unannotated-positive and negative entries.

        Streamed over the samples in chunks of about ``CHUNK_BYTES``: bounded memory at any N (ImageNet,
        COCO); untracked classes of the top-k store count as 0. ``truth``: N x L full labels, or None.
        """
        store, annotated = self.heatmaps, self._observed
        assert store is not None and annotated is not None
        groups = ("annotated", "unannotated_positive", "negative") if truth is not None else ("annotated",)
        sums, counts = dict.fromkeys(groups, 0.0), dict.fromkeys(groups, 0)
        # Per sample: its maps (uint8, summed as integers) and a few N' x L bool masks.
        step = max(1, CHUNK_BYTES // (store[0].numel() + 4 * self.num_classes))
        scale = 255.0 * store.shape[-1] * store.shape[-2]
        # Read-ahead for this whole-store pass (rows are read at random otherwise: storage.MemmapFile.sequential).
        with self.memmap.sequential() if self.memmap is not None else contextlib.nullcontext():
            for start in range(0, self.num_samples, step):
                rows = slice(start, min(start + step, self.num_samples))
                chunk = store[rows]
                means = chunk.reshape(*chunk.shape[:2], -1).sum(-1, dtype=torch.int32).double() / scale
                obs = annotated[rows]
                pos = torch.as_tensor(np.asarray(truth[rows])) > 0.5 if truth is not None else torch.zeros_like(obs)
                # The group of each stored slot; untracked entries add 0 to the sums and 1 to the counts.
                ids = self.classes[rows] if self.classes is not None else torch.arange(self.num_classes).expand_as(obs)
                slot_valid, slot = ids >= 0, ids.clamp_min(0)
                slot_obs, slot_pos = obs.gather(1, slot) & slot_valid, pos.gather(1, slot) & slot_valid
                n_obs, n_pos = torch.count_nonzero(obs), torch.count_nonzero(pos)  # far faster than bool sums
                entries = {"annotated": n_obs, "unannotated_positive": n_pos - torch.count_nonzero(pos & obs),
                           "negative": obs.numel() - torch.count_nonzero(pos | obs)}  # fmt: skip
                slots = {"annotated": slot_obs, "unannotated_positive": slot_pos & ~slot_obs,
                         "negative": slot_valid & ~slot_pos & ~slot_obs}  # fmt: skip
                for group in groups:
                    sums[group] += float(means[slots[group]].sum())
                    counts[group] += int(entries[group])
        return {f"diag/heatmap_{g}": sums[g] / counts[g] if counts[g] else float("nan") for g in groups}

    def _should_plot(self, trainer: L.Trainer) -> bool:
        every = self.plot_every_n_epochs
        return every > 0 and getattr(trainer, "is_global_zero", True) and (trainer.current_epoch + 1) % every == 0

    def _plot_epoch(self, trainer: L.Trainer, truth: np.ndarray | Tensor) -> Path | None:
        """Heatmaps of a few fixed images (ones with several true labels) as PNG and in the loggers."""
        labels_per_sample = np.asarray(truth).sum(1)  # 0/1 labels: one N-vector, no N x L copy
        candidates = np.flatnonzero(labels_per_sample >= 2)[: self.plot_num_samples].tolist()
        if not candidates:
            return None
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", {}) or {}
        train = datasets.get("train")
        names = list(getattr(train, "class_names", [str(c) for c in range(self.num_classes)]))
        out = Path(trainer.default_root_dir) / "heatmaps" / f"epoch_{trainer.current_epoch:03d}.png"
        path = plot_heatmaps(self, candidates, names, out, truth)
        log_figure(trainer, "heatmaps", path)
        return path

    def class_map(self, sample: int, cls: int) -> Tensor:
        """Heatmap (W x W, float in [0, 1]) of one sample and class; zeros for an untracked class."""
        store = self.heatmaps
        assert store is not None
        if self.classes is None:
            return store[sample, cls].float() / 255.0
        slots = (self.classes[sample] == cls).nonzero()
        if slots.numel() == 0:
            return torch.zeros(store.shape[-2:])
        return store[sample, int(slots[0, 0])].float() / 255.0

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """RAM mode: the tensors (base class). Memmap mode: a reference to a snapshot file
        (:meth:`MemmapFile.snapshot`: written by rank 0, reused by a second save without update)."""
        state = super().state_dict()
        if self.memmap is None or self.memmap.array is None:
            return state
        state["memmap"] = self.memmap.snapshot(self._global_step, self.meta.get("updates"), self._shape())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore tensors (RAM) or copy the snapshot back to the live file and verify it (memmap).

        Lightning also restores callbacks for ``trainer.test(ckpt_path=...)``; outside fitting
        the heatmaps are not needed, so the (possibly pruned, possibly huge) snapshot is only
        restored if training starts. A direct call (no trainer) restores immediately.
        """
        reference = state_dict.get("memmap")
        saved_meta = state_dict.get("meta", {})
        if self.memmap_dir is None and saved_meta.get("memmap"):
            raise ValueError(
                "the checkpoint's heatmap store is memory-mapped (a snapshot file); resume with the same memmap_dir"
            )
        if self.memmap_dir is not None and "maps" in state_dict.get("tensors", {}):
            raise ValueError("the checkpoint holds an in-RAM heatmap store; resume without memmap_dir")
        if saved_meta and saved_meta.get("topk") != self.topk:
            raise ValueError(f"the checkpoint's heatmap store has topk={saved_meta.get('topk')}, this run {self.topk}")
        if saved_meta and self.grid_size_arg is not None and saved_meta.get("grid_size") != self.grid_size_arg:
            raise ValueError(
                f"the checkpoint's heatmaps are for G = {saved_meta.get('grid_size')}, this run sets {self.grid_size_arg}"
            )
        super().load_state_dict(state_dict)
        if self.memmap is not None:
            self.memmap.forget_snapshot()
        if reference is None:
            return
        if self._stage not in (None, "fit"):
            self._pending_snapshot = reference
            return
        self._restore_snapshot(reference)

    def _restore_snapshot(self, reference: dict[str, Any]) -> None:
        assert self.memmap is not None
        self.memmap.restore(reference, self._shape())
