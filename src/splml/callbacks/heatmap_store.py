"""Spatial heatmap store for SCL (spatial consistency loss).

Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
Single-Label Annotations*, WACV 2023. Every training sample n keeps, per class, a W x W heatmap
``H_n`` (W = 2G, G = side of the model's class score maps) describing *where in the original
image* the class has been seen. Because each training view is a random crop (and flip) of the
image, the store is kept in original-image coordinates and warped to every view:

* target (before the forward): ``T(H_n)`` = the crop box region of ``H_n``, flipped like the
  image and resized to G x G (bilinear) -> ``batch["extras"]["heatmap_targets"]`` in ``[0, 1]``;
* update (after the forward): the cells of ``H_n`` whose centres lie inside the crop box take
  ``round(mu * H + (1 - mu) * 255 * F)``, where ``F = sigmoid(maps)`` is sampled (bilinear) at the
  cell's position in the view, flips undone. Cells outside the crop are not seen and keep their
  value.

Coordinates: the crop box ``(top, left, h, w)`` is in original pixels; it is scaled by ``W / S``
(S = image side) into continuous heatmap coordinates, where cell ``a`` spans ``[a, a + 1)``.
Sampling positions are computed per output cell centre (``align_corners=False`` convention) and
clamped to half a cell inside the box, which reproduces exactly how the image itself was made
(slice, then ``F.interpolate(..., align_corners=False)``, which clamps at the slice border) and
keeps information from outside the visible crop out of the target. For integer-aligned boxes
the target is therefore bit-for-bit ``interpolate(flip(H[box]), G)``.

Storage (uint8, 0..255 encodes 0..1), initialised 255 at the annotated class, 0 elsewhere:

* full: N x L x W x W bytes (about 8 GB for COCO at 448 px);
* ``topk=k``: N x k x W x W maps plus N x k class ids (int64), i.e. N * k * (W^2 + 8) bytes. The
  tracked classes of a sample are fixed at its first update: the annotated class(es), then the
  highest-scoring other classes of that forward. Untracked classes have an all-zero target,
  which is what the full store would hold for a class the model never fires on;
* ``memmap_dir``: the maps live in ``<memmap_dir>/heatmaps.uint8`` (``numpy.memmap``) and are only
  ever read and written by row index, so the store may exceed RAM. Checkpoints then hold a
  reference to a snapshot file (path, shape, blake2b checksum), not the array.

Distributed training: each rank computes the updated rows of its own samples, the rows are
gathered through the store base (:meth:`StoreCallback.gather_updates`, rank order) and every
rank writes the same bytes, so the stores stay bit-identical; rows the sampler added as padding
are never written and a repeated index keeps its first occurrence, so each sample updates its
heatmaps exactly once per epoch (``coverage``).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from splml.callbacks.experiment_log import log_figure
from splml.callbacks.store import StoreCallback, distributed_ready

#: Name of the live memory-mapped store inside ``memmap_dir``.
LIVE_FILE = "heatmaps.uint8"
#: How many checkpoint snapshots of a memory-mapped store are kept on disk.
KEEP_SNAPSHOTS = 2
#: Chunk size for copying/hashing store files and for whole-store passes (diagnostics, init).
_CHUNK_BYTES = 64 * 1024 * 1024


def _rank() -> int:
    return dist.get_rank() if distributed_ready() else 0


def crop_boxes_in_cells(
    aug: dict[str, Any] | None, batch_size: int, image_hw: tuple[int, int], width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes, hflip, vflip)`` of a batch: boxes B x 4 = (y0, x0, y1, x1) in heatmap cells.

    A batch without an ``aug`` record shows whole, unflipped images. Multiplying before
    dividing keeps pixel boundaries that fall on cell boundaries exact in floating point.
    """
    height, width_px = image_hw
    if aug is None or "crop" not in aug:
        crop = torch.tensor([[0, 0, height, width_px]], dtype=torch.float64).expand(batch_size, 4)
    else:
        crop = torch.as_tensor(aug["crop"]).reshape(batch_size, 4).to(torch.float64)
    top, left, h, w = crop.cpu().unbind(1)
    boxes = torch.stack(
        (top * width / height, left * width / width_px, (top + h) * width / height, (left + w) * width / width_px), 1
    )

    def flag(key: str) -> Tensor:
        value = None if aug is None else aug.get(key)
        if value is None:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        return torch.as_tensor(value).reshape(batch_size).bool().to(device)

    return boxes.to(device=device, dtype=torch.float32), flag("flip"), flag("vflip")


def _forward_axis(lo: Tensor, hi: Tensor, flip: Tensor, size: int, width: int) -> Tensor:
    """Normalised heatmap coordinates (B x size) sampled by the ``size`` cells of a view axis.

    Output cell j shows the point at fraction ``(j + 0.5) / size`` of the box (mirrored when
    flipped), clamped to half a cell inside the box like ``interpolate`` clamps at a slice edge.
    """
    frac = (torch.arange(size, device=lo.device, dtype=torch.float32) + 0.5) / size
    frac = torch.where(flip[:, None], 1 - frac, frac)
    extent = hi - lo
    pos = lo[:, None] + frac * extent[:, None]
    margin = (extent / 2).clamp(max=0.5)
    pos = torch.maximum(torch.minimum(pos, (hi - margin)[:, None]), (lo + margin)[:, None])
    return 2 * pos / width - 1


def _backward_axis(lo: Tensor, hi: Tensor, flip: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """For the W heatmap cells of an axis: normalised view coordinates (B x W) and visibility.

    A cell is visible when its centre lies in ``[lo, hi)``; half-open so that adjacent boxes
    share no cell. Its view position is the inverse of :func:`_forward_axis` (flip undone).
    """
    centres = torch.arange(width, device=lo.device, dtype=torch.float32) + 0.5
    inside = (centres >= lo[:, None]) & (centres < hi[:, None])
    frac = (centres - lo[:, None]) / (hi - lo).clamp_min(1e-6)[:, None]
    frac = torch.where(flip[:, None], 1 - frac, frac)
    return 2 * frac - 1, inside


def _grid(gx: Tensor, gy: Tensor) -> Tensor:
    """``grid_sample`` grid (B x Y x X x 2) of a separable warp."""
    b, ny, nx = gx.shape[0], gy.shape[1], gx.shape[1]
    return torch.stack((gx[:, None, :].expand(b, ny, nx), gy[:, :, None].expand(b, ny, nx)), dim=-1)


def forward_warp(heatmaps: Tensor, boxes: Tensor, hflip: Tensor, vflip: Tensor, grid_size: int) -> Tensor:
    """Crop + flip + resize of stored heatmaps (B x C x W x W, any float scale) to B x C x G x G."""
    width = heatmaps.shape[-1]
    gx = _forward_axis(boxes[:, 1], boxes[:, 3], hflip, grid_size, width)
    gy = _forward_axis(boxes[:, 0], boxes[:, 2], vflip, grid_size, width)
    return F.grid_sample(heatmaps, _grid(gx, gy), mode="bilinear", padding_mode="border", align_corners=False)


def backward_warp(maps: Tensor, boxes: Tensor, hflip: Tensor, vflip: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """View maps (B x C x G x G) resampled onto the W x W heatmap grid, and the visible-cell mask.

    Returns ``(values B x C x W x W, visible B x 1 x W x W)``; values outside the mask are
    meaningless (border-clamped) and must not be written.
    """
    gx, inside_x = _backward_axis(boxes[:, 1], boxes[:, 3], hflip, width)
    gy, inside_y = _backward_axis(boxes[:, 0], boxes[:, 2], vflip, width)
    values = F.grid_sample(maps, _grid(gx, gy), mode="bilinear", padding_mode="border", align_corners=False)
    visible = inside_y[:, :, None] & inside_x[:, None, :]
    return values, visible[:, None]


def ema_update(old: Tensor, probs: Tensor, visible: Tensor, momentum: float) -> Tensor:
    """``round(mu * H + (1 - mu) * 255 * F)`` on visible cells, ``H`` elsewhere; uint8 result."""
    new = (momentum * old.float() + (1 - momentum) * 255.0 * probs.float()).round().clamp(0, 255)
    return torch.where(visible, new, old.float()).to(torch.uint8)


def _copy_with_checksum(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` in chunks and return the blake2b digest of the bytes copied.

    One pass does both, so snapshotting or restoring a store larger than RAM reads it once.
    """
    digest = hashlib.blake2b(digest_size=20)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


class HeatmapStore(StoreCallback):
    """Owns the per-sample heatmaps of SCL; fills ``batch["extras"]["heatmap_targets"]``.

    ``grid_size`` (G) and ``image_size`` (S) are inferred from the first training batch when not
    given (G by one no-grad forward of one image in eval mode, because the target is needed
    before the first forward). See the module docstring for the geometry and storage modes.
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
        self.memmap_dir = None if memmap_dir is None else Path(memmap_dir).expanduser().resolve()
        self.log_diagnostics = log_diagnostics
        self._mm: np.memmap | None = None
        self._mm_tensor: Tensor | None = None
        self._observed: Tensor | None = None
        self._global_step = 0
        self._stage: str | None = None
        self._pending_snapshot: dict[str, Any] | None = None
        self._last_snapshot: dict[str, Any] | None = None

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
        return self._mm_tensor if self.memmap_dir is not None else self.tensors.get("maps")

    @property
    def classes(self) -> Tensor | None:
        """Top-k mode: N x k tracked class ids (-1 = slot not chosen yet); None otherwise."""
        return self.tensors.get("classes")

    @property
    def live_path(self) -> Path:
        """This rank's live memmap file (ranks > 0 use a sub-folder: each process owns its file)."""
        if self.memmap_dir is None:
            raise ValueError("live_path only exists in memmap mode")
        rank = _rank()
        return self.memmap_dir / LIVE_FILE if rank == 0 else self.memmap_dir / f"rank{rank}" / LIVE_FILE

    def _shape(self) -> tuple[int, int, int, int]:
        width = int(self.meta["width"])
        return (self.num_samples, self.topk or self.num_classes, width, width)

    def merged_with(self, other: StoreCallback) -> HeatmapStore:
        """Two loss parts asking for the heatmap store share one, if they agree on its settings."""
        assert isinstance(other, HeatmapStore)
        mine = (self.topk, self.memmap_dir, self.grid_size_arg, self.image_size_arg)
        theirs = (other.topk, other.memmap_dir, other.grid_size_arg, other.image_size_arg)
        if not math.isclose(self.momentum, other.momentum) or mine != theirs:
            raise ValueError("two parts of the loss ask for heatmap stores with different settings")
        return self

    # -- creation ---------------------------------------------------------------------------
    def _open_memmap(self, mode: str) -> None:
        path = self.live_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._mm = np.memmap(path, dtype=np.uint8, mode=mode, shape=self._shape())
        # Rows are read and written at random indices: without this advice every page fault
        # reads ahead (8 MiB on typical disks), which pulled the whole multi-GB file into the
        # page cache at creation (experiments/methods/README.md). Only touched pages now load.
        if hasattr(mmap, "MADV_RANDOM") and getattr(self._mm, "_mmap", None) is not None:
            self._mm._mmap.madvise(mmap.MADV_RANDOM)
        self._mm_tensor = torch.from_numpy(self._mm)

    def flush(self) -> None:
        """Write memory-mapped pages to disk (no-op in RAM mode)."""
        if self._mm is not None:
            self._mm.flush()

    def _initial_classes(self, annotated: Tensor) -> Tensor:
        """Top-k slots before any update: annotated classes (ascending), then -1 (not chosen)."""
        k = int(self.topk or 0)
        ids = torch.arange(self.num_classes)
        order = torch.argsort(torch.where(annotated, ids, ids + self.num_classes), dim=1)[:, :k]
        return torch.where(annotated.gather(1, order), order, torch.full_like(order, -1))

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
        if self.memmap_dir is not None:
            self._open_memmap("w+")
        else:
            self.tensors["maps"] = torch.zeros(self._shape(), dtype=torch.uint8)
        store = self.heatmaps
        assert store is not None
        per_pair = int(self.meta["width"]) ** 2
        step = max(1, _CHUNK_BYTES // per_pair)
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
        maps = model_out["maps"].float().sigmoid()
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
            values, visible = backward_warp(maps, boxes, hflip, vflip, int(self.meta["width"]))
            rows = ema_update(old, values, visible, self.momentum)
            self.apply_rows(*self.gather_updates(batch, rows))
        else:
            logits = model_out.get("logits")
            probs = logits.float().sigmoid() if logits is not None else maps.mean(dim=(-2, -1))
            chosen = self._choose_classes(classes[idx].to(device), probs)
            tracked = maps.gather(1, chosen[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
            values, visible = backward_warp(tracked, boxes, hflip, vflip, int(self.meta["width"]))
            rows = ema_update(old, values, visible, self.momentum)
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
        step = max(1, _CHUNK_BYTES // max(1, store[0].numel()))
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
        means = self.class_means()
        annotated = self._observed
        values = {"diag/heatmap_annotated": means[annotated]}
        truth = self.train_targets(trainer)
        if truth is not None:
            truth = truth > 0.5
            values["diag/heatmap_unannotated_positive"] = means[truth & ~annotated]
            values["diag/heatmap_negative"] = means[~truth & ~annotated]
        for name, selected in values.items():
            if selected.numel():
                pl_module.log(name, float(selected.mean()), sync_dist=False)
        if truth is not None and self._should_plot(trainer):
            self._plot_epoch(trainer, truth)

    def _should_plot(self, trainer: L.Trainer) -> bool:
        every = self.plot_every_n_epochs
        return every > 0 and getattr(trainer, "is_global_zero", True) and (trainer.current_epoch + 1) % every == 0

    def _plot_epoch(self, trainer: L.Trainer, truth: Tensor) -> Path | None:
        """Heatmaps of a few fixed images (ones with several true labels) as PNG and in the loggers."""
        candidates = torch.nonzero(truth.sum(1) >= 2).flatten()[: self.plot_num_samples].tolist()
        if not candidates:
            return None
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", {}) or {}
        train = datasets.get("train")
        names = list(getattr(train, "class_names", [str(c) for c in range(self.num_classes)]))
        out = Path(trainer.default_root_dir) / "heatmaps" / f"epoch_{trainer.current_epoch:03d}.png"
        path = self.plot_heatmaps(candidates, names, out, truth)
        log_figure(trainer, "heatmaps", path)
        return path

    def plot_heatmaps(
        self,
        sample_indices: list[int] | Tensor,
        class_names: list[str],
        out_path: str | Path,
        targets: Tensor,
        observed: Tensor | None = None,
    ) -> Path:
        """PNG with, per sample, its annotated class, one unannotated true class and one negative.

        The unannotated true class is the one the store rates highest (did SCL discover it?); the
        negative likewise (does the store leak onto absent classes?). ``targets`` are the full
        N x L training labels; ``observed`` defaults to the annotations read during training.
        Drawn with the object-oriented Agg canvas, so the global matplotlib backend is untouched.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        store = self.heatmaps
        if store is None:
            raise ValueError("the heatmap store has not been created yet")
        obs = self._observed if observed is None else torch.as_tensor(observed) > 0.5
        if obs is None:
            raise ValueError("pass observed: the store has not read the training annotations")
        truth = torch.as_tensor(targets) > 0.5
        indices = [int(i) for i in torch.as_tensor(sample_indices).reshape(-1).tolist()]
        means = self.class_means(torch.tensor(indices, dtype=torch.long))
        fig = Figure(figsize=(9, 3 * max(1, len(indices))))
        FigureCanvasAgg(fig)
        axes = fig.subplots(max(1, len(indices)), 3, squeeze=False)
        for row, n in enumerate(indices):
            groups = (
                ("annotated", obs[n]),
                ("unannotated true", truth[n] & ~obs[n]),
                ("negative", ~truth[n] & ~obs[n]),
            )
            for col, (label, mask) in enumerate(groups):
                ax = axes[row][col]
                ax.set_xticks([])
                ax.set_yticks([])
                if not bool(mask.any()):
                    ax.set_title(f"#{n} {label}: none", fontsize=8)
                    continue
                c = int(torch.where(mask, means[row], torch.full_like(means[row], -1.0)).argmax())
                ax.imshow(self.class_map(n, c).numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
                name = class_names[c] if len(class_names[c]) <= 28 else class_names[c][:27] + "…"
                ax.set_title(f"#{n} {label}: {name} ({float(means[row, c]):.2f})", fontsize=8)
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        return out

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
        """RAM mode: the tensors (base class). Memmap mode: a reference to a snapshot file.

        The snapshot (``heatmaps-step<global_step>.uint8``) is written by rank 0 only, the rank
        whose checkpoint Lightning saves; other ranks return the same reference without copying.
        Saving twice without an update in between (best + last checkpoints) reuses the snapshot.
        """
        state = super().state_dict()
        if self.memmap_dir is None or self._mm is None:
            return state
        self.flush()
        name = f"heatmaps-step{self._global_step}.uint8"
        target = self.memmap_dir / name
        reference = {"path": str(target), "file": name, "shape": list(self._shape()), "checksum": None}
        if _rank() != 0:
            state["memmap"] = reference
            return state
        key = (self._global_step, self.meta.get("updates"))
        if self._last_snapshot is not None and self._last_snapshot["key"] == key and target.exists():
            state["memmap"] = dict(self._last_snapshot["reference"])
            return state
        tmp = target.with_name(name + ".tmp")
        reference["checksum"] = _copy_with_checksum(self.live_path, tmp)
        os.replace(tmp, target)
        self._last_snapshot = {"key": key, "reference": dict(reference)}
        self._prune_snapshots()
        state["memmap"] = reference
        return state

    def _prune_snapshots(self) -> None:
        """Keep the most recently written snapshots (by mtime, so a resumed run's count first)."""
        assert self.memmap_dir is not None

        def age(path: Path) -> tuple[int, int]:
            step = path.name.removeprefix("heatmaps-step").removesuffix(".uint8")
            return path.stat().st_mtime_ns, int(step) if step.isdigit() else -1

        snapshots = sorted(self.memmap_dir.glob("heatmaps-step*.uint8"), key=age)
        for old in snapshots[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)

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
        self._last_snapshot = None
        if reference is None:
            return
        if self._stage not in (None, "fit"):
            self._pending_snapshot = reference
            return
        self._restore_snapshot(reference)

    def _restore_snapshot(self, reference: dict[str, Any]) -> None:
        assert self.memmap_dir is not None
        if reference.get("checksum") is None:
            raise ValueError("this heatmap-store state was not written by rank 0 and has no snapshot checksum")
        snapshot = Path(reference["path"])
        if not snapshot.exists():
            snapshot = self.memmap_dir / reference["file"]
        if not snapshot.exists():
            raise FileNotFoundError(
                f"heatmap store snapshot {reference['path']} is missing, nor is it in this run's memmap_dir "
                f"{self.memmap_dir} (only the {KEEP_SNAPSHOTS} most recent snapshots are kept; a moved run folder "
                f"takes its snapshots along: copy {reference['file']} into {self.memmap_dir}); resume from a recent "
                f"checkpoint or without its callback state"
            )
        expected = int(np.prod(reference["shape"]))
        if snapshot.stat().st_size != expected:
            raise ValueError(
                f"heatmap store snapshot {snapshot} is corrupt: {snapshot.stat().st_size} bytes, expected {expected}"
            )
        if tuple(reference["shape"]) != self._shape():
            raise ValueError(f"heatmap store snapshot has shape {reference['shape']}, this run needs {self._shape()}")
        self._mm, self._mm_tensor = None, None
        live = self.live_path
        live.parent.mkdir(parents=True, exist_ok=True)
        tmp = live.with_name(live.name + ".restore")
        checksum = _copy_with_checksum(snapshot, tmp)
        if checksum != reference["checksum"]:
            tmp.unlink(missing_ok=True)
            raise ValueError(
                f"heatmap store snapshot {snapshot} is corrupt: checksum {checksum} != {reference['checksum']}"
            )
        os.replace(tmp, live)
        self._open_memmap("r+")
