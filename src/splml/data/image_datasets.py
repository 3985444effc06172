"""Multi-label RGB image datasets (AID, COCO, VOC, NUS-WIDE, CUB, retrieval sets).

Every reader of an RGB image collection reduces to the same three facts per split: a list of
image files, an N x L 0/1 label matrix and an id per image. This module turns those facts into
items following the batch contract of :mod:`splml.losses.base` (exactly like
:class:`splml.data.reben.ReBENDataset`), and into a LightningDataModule with the public surface
of :class:`splml.data.datamodule.ReBENDataModule`, so the training script, the callbacks and the
stores never learn which collection they are looking at.

Image geometry. An image of any size is shown to the network as an ``image_size`` x
``image_size`` view of the *whole* image (stretched, as the SPML recipe's ``Resize((448, 448))``).
That S x S frame is the coordinate system of the augmentation record: a training crop box
``(top, left, height, width)`` is drawn in the frame exactly as
:class:`splml.data.transforms.RecordedSpatialAugment` draws it, but the pixels are cut from the
full-resolution source (the box mapped back to source pixels), so a small crop keeps the detail
of the original file. The heatmap store therefore sees the same record as on reBEN.
"""

from __future__ import annotations

import csv
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from splml.data.datamodule import SplitDataModule
from splml.data.labels import DominantSinglePositive, LabelSource, RandomSinglePositive, save_observed
from splml.data.reben import DataFormatError
from splml.data.sampler import sample_item
from splml.data.transforms import FrameRandomResizedCrop, RecordedSpatialAugment

log = logging.getLogger(__name__)

#: ImageNet statistics (RGB, on [0, 1]): every pretrained RGB backbone of timm expects them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: File suffixes treated as images when folders are indexed (compared lower-case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(name: str) -> Image.Resampling:
    """PIL filter for a config name; a typo is an error listing the choices."""
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {name!r}") from None


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file completely into an RGB PIL image.

    ``Image.open`` only reads the header; ``load`` forces the full decode here so that a
    truncated or corrupt file fails now, with its name, instead of as a grey image or an
    anonymous error inside a DataLoader worker.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataFormatError(f"image file not found: {path}") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from exc


def render_view(
    image: Image.Image,
    size: int,
    box: tuple[int, int, int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """The ``size`` x ``size`` view of ``box`` = (top, left, h, w) in the size x size frame.

    The frame is the whole image stretched to ``size`` x ``size``; the box is mapped back to
    source pixels (rounded to whole pixels) and that region alone is resampled once, so crops
    keep the source resolution and no pixel outside the box leaks in at the border (PIL's
    ``resize(box=...)`` would read past it), as with reBEN's slice-then-interpolate.
    """
    if box is None:
        return image.resize((size, size), resample)
    top, left, h, w = box
    sx, sy = image.width / size, image.height / size
    x0, y0 = round(left * sx), round(top * sy)
    x1, y1 = max(round((left + w) * sx), x0 + 1), max(round((top + h) * sy), y0 + 1)
    return image.crop((x0, y0, x1, y1)).resize((size, size), resample)


def build_photometric(spec: Sequence[dict[str, Any]] | None) -> Any:
    """An albumentations ``Compose`` of pixel-level transforms from config, or None.

    ``spec`` is a list of ``{name: <albumentations class>, <its arguments>}``. Only
    ``ImageOnlyTransform`` classes are accepted: a transform that moves pixels (crop, rotate,
    affine) would not be reflected in the ``aug`` record that spatial methods rely on, so it is
    refused with a message pointing at the recorded options.
    """
    if not spec:
        return None
    # The package checks PyPI for a newer version on import unless told not to; training must not.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    transforms = []
    for k, entry in enumerate(spec):
        entry = dict(entry)
        name = entry.pop("name", None)
        cls = getattr(A, str(name), None) if name else None
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"augment.photometric[{k}]: {name!r} is not an albumentations transform")
        if not issubclass(cls, A.ImageOnlyTransform):
            raise TypeError(
                f"augment.photometric[{k}]: {name} changes the geometry of the image, which the augmentation "
                "record cannot follow; use augment.crop_scale / hflip / vflip for spatial augmentation"
            )
        transforms.append(cls(**entry))
    return A.Compose(transforms)


class RecordedImageAugment(RecordedSpatialAugment):
    """Random resized crop and flips recorded in ``item["aug"]``, then photometric transforms.

    The crop box and flips are drawn as by the parent class in the ``image_size`` frame (same
    generator calls in the same order, same record), but the view is cut from the decoded
    source image (``item["image"]``, a PIL image) rather than from an already-resized tensor: the
    crop renders it from the pipeline's ``source`` (so the ``image`` it is given only stands in
    until then, and the source is never converted to an array). Photometric transforms come
    from albumentations (config list ``photometric``); their randomness is seeded from the same
    per-item generator, so a resumed run repeats them.
    The result in ``item["image"]`` is an ``image_size`` x ``image_size`` x 3 uint8 array.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        vflip: bool = False,
        photometric: Sequence[dict[str, Any]] | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.image_size = int(image_size)
        self.resample = resample_filter(interpolation)
        super().__init__(crop_scale=crop_scale, crop_ratio=crop_ratio, hflip=hflip, vflip=vflip)
        self.photometric_spec = [dict(x) for x in (photometric or [])]
        # Built eagerly so that a config error surfaces at setup, not in a worker.
        self._photometric = build_photometric(self.photometric_spec)
        self._stand_in = np.zeros((1, 1, 3), dtype=np.uint8)

    def crop_transform(self) -> FrameRandomResizedCrop:
        # Always: without crop_scale it renders the whole frame (and draws nothing).
        frame = (self.image_size, self.image_size)
        return FrameRandomResizedCrop(self.crop_scale, self.crop_ratio, frame=frame, render=self._render)

    def _render(self, source: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        return np.array(render_view(source, self.image_size, box, self.resample), dtype=np.uint8)

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        size = self.image_size
        out = self.augment(generator, (size, size), image=self._stand_in, source=item["image"])
        pixels = out["image"]
        if self._photometric is not None:
            self._photometric.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            pixels = np.ascontiguousarray(self._photometric(image=pixels)["image"])
        item["image"] = pixels
        item["aug"] = out["aug"]
        return item


def check_observed(observed: np.ndarray, targets: np.ndarray, ids: Sequence[str], where: str) -> np.ndarray:
    """Validate an observed label matrix (shape of ``targets``, values in {-1, 0, 1}).

    Shared by every dataset that accepts observed labels, so the error always names the sample.
    """
    observed = np.asarray(observed, dtype=np.float32)
    if observed.shape != targets.shape:
        raise ValueError(f"observed labels have shape {observed.shape}, expected {targets.shape} for {where}")
    bad = ~np.isin(observed, (-1.0, 0.0, 1.0))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"observed labels must be -1, 0 or 1; row {row} ({ids[row]}) of {where} has {observed[row].tolist()}"
        )
    return observed


class MultiLabelImageDataset(torch.utils.data.Dataset):
    """One split of an RGB multi-label collection; items follow the batch contract.

    ``image`` is a 3 x S x S float32 tensor normalised with the ImageNet statistics, ``target``
    the full labels, ``observed`` the labels the loss may see (full labels unless
    :meth:`set_observed` installed others), ``index`` the position in this split, ``padded``
    the sampler's padding flag and, when ``transform`` is set, the ``aug`` record. Keys from
    the sampler are ``(index, augmentation seed, padded)`` tuples; plain ints work too.
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        targets: np.ndarray,
        ids: Sequence[str],
        transform: RecordedImageAugment | None = None,
        image_size: int = 224,
        interpolation: str = "bilinear",
        name: str = "images",
        class_names: Sequence[str] | None = None,
    ) -> None:
        targets = np.asarray(targets)
        if targets.ndim != 2:
            raise ValueError(f"{name}: labels must be an N x L matrix, got shape {targets.shape}")
        if not (len(image_paths) == len(ids) == targets.shape[0]):
            raise ValueError(
                f"{name}: {len(image_paths)} images, {len(ids)} ids and {targets.shape[0]} label rows must match"
            )
        if transform is not None and transform.image_size != int(image_size):
            raise ValueError(f"{name}: transform renders {transform.image_size} px but image_size is {image_size}")
        self.image_paths = [Path(p) for p in image_paths]
        self.ids = [str(i) for i in ids]
        self.targets = targets.astype(np.uint8)
        self.observed: np.ndarray = self.targets.astype(np.float32)
        self.transform = transform
        self.image_size = int(image_size)
        self.resample = resample_filter(interpolation)
        self.name = name
        # Plots of per-sample stores read class names from the training dataset, as on reBEN.
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(str(c) for c in range(targets.shape[1]))
        )
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, i: int) -> Image.Image:
        """The decoded source image of sample ``i`` (RGB, native size)."""
        return read_rgb(self.image_paths[i])

    def display_image(self, i: int) -> np.ndarray:
        """Image ``i`` as the network sees it without augmentation, ``S x S x 3`` uint8 (figures only)."""
        return np.array(render_view(self.read_image(i), self.image_size, None, self.resample), dtype=np.uint8)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        item = sample_item(key, self.read_image, self.targets, self.observed, self.transform)
        if self.transform is None:
            item["image"] = np.array(render_view(item["image"], self.image_size, None, self.resample), dtype=np.uint8)
        pixels = torch.from_numpy(item["image"]).permute(2, 0, 1).float().div_(255.0)
        item["image"] = ((pixels - self._mean) / self._std).contiguous()
        return item

    def set_observed(self, observed: np.ndarray) -> None:
        """Install observed labels (N x L in {-1, 0, 1}), validated against this split."""
        self.observed = check_observed(observed, self.targets, self.ids, f"split {self.name!r}")


@dataclass(frozen=True)
class SplitSource:
    """The images, full labels and ids of one split, before any dataset object exists."""

    paths: tuple[Path, ...]
    targets: np.ndarray
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.ids) == len(self.targets)):
            raise ValueError(f"{len(self.paths)} paths, {len(self.ids)} ids, {len(self.targets)} label rows")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: Sequence[int] | np.ndarray) -> SplitSource:
        rows = np.asarray(rows, dtype=np.int64)
        return SplitSource(tuple(self.paths[r] for r in rows), self.targets[rows], tuple(self.ids[r] for r in rows))


def seeded_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, carved) sorted index arrays, ``round(fraction * n)`` carved.

    The SPML literature's convention (Cole et al. 2021: official train -> 80 % train / 20 %
    validation with split seed 1200): one ``numpy.random.RandomState(seed)`` permutation, the
    first ``n - n_carved`` entries kept and the last ``n_carved`` carved, both sorted. Using the
    same permutation rule reproduces the literature's validation images exactly.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    n_carved = int(np.round(fraction * n))
    order = np.random.RandomState(seed).permutation(n)
    return np.sort(order[: n - n_carved]), np.sort(order[n - n_carved :])


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A small CSV writer used for every report next to a run (keeps the format uniform)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


class ImageDataModule(SplitDataModule, ABC):
    """Base of the RGB datamodules: official train pool -> train + validation, official test.

    Subclasses only say how to read their files (:meth:`read_sources`) and what their classes
    are. Everything else is shared and identical to :class:`ReBENDataModule`'s behaviour:

    * validation is carved from the official training set with :func:`seeded_split`
      (``val_fraction``, ``split_seed``), so it is the same for every run and every method;
    * the label source observes the whole official training pool *before* the carve and the
      training split keeps its rows. That is how the SPML literature builds its observed-label
      files (drawn on the official train set, then split), and it lets a manual label file
      cover the official train set, validation images included;
    * validation and test keep their full labels;
    * loaders use :class:`EpochSeededSampler` (order and augmentation from (seed, epoch, index)).

    Items the reader finds unusable (see :meth:`report_bad`), and training images without any
    positive label, are an error naming them, or with ``skip_bad=true`` a logged count and
    ``skipped_items.csv`` next to the run.
    """

    #: Name used in messages (``labels=dominant`` refusal, errors, logs).
    display_name: str = "this image dataset"

    def __init__(
        self,
        root: str | Path | None = None,
        labels: LabelSource | None = None,
        image_size: int = 224,
        interpolation: str = "bilinear",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        augment: dict[str, Any] | None = None,
        max_samples: dict[str, int | None] | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 1200,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, seed)
        self.root = Path(root) if root is not None else None
        self.label_source = labels if labels is not None else RandomSinglePositive()
        self.image_size = int(image_size)
        self.interpolation = interpolation
        resample_filter(interpolation)  # fail on a typo at construction
        self.augment = dict(augment or {})
        self.max_samples = dict(max_samples or {})
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.skip_bad = bool(skip_bad)
        #: (item, reason) pairs dropped by ``skip_bad``; written next to the run.
        self.skipped: list[tuple[str, str]] = []

    # -- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """Class names in label-vector order."""

    @abstractmethod
    def read_sources(self, root: Path) -> tuple[SplitSource, SplitSource]:
        """(official training pool, test split) read from the files under ``root``."""

    # -- facts the model and the losses need -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return 3

    # -- shared helpers for readers ----------------------------------------------------------
    def resolve_root(self) -> Path:
        if self.root is None:
            raise ValueError(f"dataset.root is not set: point it at the {self.display_name} folder")
        if not self.root.exists():
            raise FileNotFoundError(f"dataset root {self.root} does not exist")
        return self.root

    def report_bad(self, bad: Sequence[tuple[str, str]], what: str) -> None:
        """Fail on unusable items, naming them; with ``skip_bad`` record and log them instead.

        ``bad`` holds (item, reason) pairs; the caller drops the items when this returns.
        """
        if not bad:
            return
        reasons: dict[str, int] = {}
        for _, reason in bad:
            reasons[reason] = reasons.get(reason, 0) + 1
        summary = "; ".join(f"{count} {reason}" for reason, count in reasons.items())
        if not self.skip_bad:
            first = ", ".join(f"{item} ({reason})" for item, reason in bad[:5])
            raise DataFormatError(
                f"{what}: {summary}. First: {first}. Fix the files, or set dataset.datamodule.skip_bad=true "
                "to leave these items out (they are then listed in skipped_items.csv next to the run)"
            )
        self.skipped.extend(bad)
        log.warning(
            "%s: skipping %d item(s): %s (listed in skipped_items.csv next to the run)", what, len(bad), summary
        )

    # -- setup ------------------------------------------------------------------------------
    def load_sources(self) -> tuple[SplitSource, SplitSource]:
        """(official training pool, test) from the files, checked against the class list."""
        root = self.resolve_root()
        self.skipped = []  # a fresh read reports afresh
        pool, test = self.read_sources(root)
        for split_name, source in (("train", pool), ("test", test)):
            if source.targets.ndim != 2 or source.targets.shape[1] != self.num_classes:
                raise DataFormatError(
                    f"{self.display_name} {split_name} labels have shape {source.targets.shape}, "
                    f"expected N x {self.num_classes}"
                )
            if len(source) == 0:
                raise DataFormatError(f"{self.display_name}: the {split_name} split under {root} has no image")
        # No single positive can be drawn for a training image without labels: report it like a bad file.
        empty = np.flatnonzero(pool.targets.sum(1) == 0)
        self.report_bad([(pool.ids[r], "training image without any positive label") for r in empty], self.display_name)
        if empty.size:
            pool = pool.subset(np.flatnonzero(pool.targets.sum(1) > 0))
        return pool, test

    def carve_validation(self, pool: SplitSource, test: SplitSource) -> tuple[dict[str, SplitSource], np.ndarray]:
        """The three splits (validation carved from the pool) and the pool rows kept for training."""
        train_rows, val_rows = seeded_split(len(pool), self.val_fraction, self.split_seed)
        if not len(val_rows):
            raise DataFormatError(
                f"{self.display_name}: val_fraction={self.val_fraction} leaves no validation image "
                f"out of {len(pool)} training images"
            )
        return {"train": pool.subset(train_rows), "validation": pool.subset(val_rows), "test": test}, train_rows

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pool, test = self.load_sources()
        observed_pool = self.observe_pool(pool)
        sources, train_rows = self.carve_validation(pool, test)
        for split, source in sources.items():
            cap = self.max_samples.get(split)
            if cap is not None:  # null in the config = the whole split
                source = source.subset(np.arange(min(int(cap), len(source))))
            transform = None
            if split == "train" and self.augment:
                transform = RecordedImageAugment(self.image_size, interpolation=self.interpolation, **self.augment)
            self.datasets[split] = MultiLabelImageDataset(
                source.paths, source.targets, source.ids, transform=transform, image_size=self.image_size,
                interpolation=self.interpolation, name=f"{self.display_name} {split}", class_names=self.class_names,
            )  # fmt: skip
        train = self.datasets["train"]
        train.set_observed(observed_pool[train_rows][: len(train)])
        log.info(
            "%s from %s: %s images (train/validation/test), labels=%s, %d px",
            self.display_name, self.root, "/".join(str(len(self.datasets[s])) for s in ("train", "validation", "test")),
            self.label_source.name, self.image_size,
        )  # fmt: skip

    def observe_pool(self, pool: SplitSource) -> np.ndarray:
        """Observed labels of the official training pool from the configured label source."""
        if isinstance(self.label_source, DominantSinglePositive):
            raise ValueError(  # noqa: TRY004 - a config choice, reported like labels.py reports it
                f"labels=dominant is not defined for {self.display_name}: {self.display_name} has no reference "
                "maps (the dominant class is read from per-pixel land-cover maps, which only reBEN provides); "
                "use labels=random, labels=manual or labels=full"
            )
        observed = self.label_source.observe(pool.targets, ids=list(pool.ids), class_names=self.class_names)
        return check_observed(observed, pool.targets, pool.ids, f"the {self.display_name} training pool")

    # -- files next to the run ----------------------------------------------------------------
    def save_observed_labels(self, out_dir: Path) -> Path:
        """Save the training split's observed labels (npy + CSV), the split membership and skips."""
        out_dir = Path(out_dir)
        train = self.datasets["train"]
        stem = out_dir / "observed_train_labels"
        save_observed(stem, train.observed, train.ids, self.class_names)
        rows = []
        for split, dataset in self.datasets.items():
            for sid, path in zip(dataset.ids, dataset.image_paths, strict=True):
                # Readers build paths as root / relative path: show them relative (pure path arithmetic).
                shown = path.relative_to(self.root) if self.root and path.is_relative_to(self.root) else path
                rows.append((sid, split, shown.as_posix()))
        write_rows(out_dir / "data_splits.csv", ("id", "split", "path"), rows)
        if self.skipped:
            write_rows(out_dir / "skipped_items.csv", ("item", "reason"), self.skipped)
        return stem.with_suffix(".npy")
