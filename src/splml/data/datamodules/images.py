"""The base of the RGB datamodules: official train pool -> train + validation, official test."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.data.datamodules.base import SplitDataModule
from splml.data.datasets.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB_BANDS,
    MultiLabelImageDataset,
    RecordedImageAugment,
    SplitSource,
    check_observed,
    resample_filter,
    seeded_split,
)
from splml.data.labels import DominantSinglePositive
from splml.io.errors import DataFormatError
from splml.io.run_folder import write_rows

log = logging.getLogger(__name__)


class ImageDataModule(SplitDataModule, ABC):
    """Base of the RGB datamodules: official train pool -> train + validation, official test.

    Subclasses only say how to read their files (:meth:`read_sources`) and what their classes
    are. Everything else is shared and identical to
    :class:`~splml.data.datamodules.reben.ReBENDataModule`'s behaviour (the label source,
    augmentation and loader options are those of
    :class:`~splml.data.datamodules.base.SplitDataModule`):

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
        image_size: int = 224,
        interpolation: str = "bilinear",
        val_fraction: float = 0.2,
        split_seed: int = 1200,
        skip_bad: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root) if root is not None else None
        self.image_size = int(image_size)
        self.interpolation = interpolation
        resample_filter(interpolation)  # fail on a typo at construction
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

    def input_spec(self) -> dict[str, Any]:
        """What the network reads (:class:`splml.io.checkpoint.DataSpec`): 8-bit RGB scaled to [0, 1] and
        normalised with the ImageNet statistics, the whole image resized to ``image_size``."""
        return {
            "class_names": tuple(self.class_names), "bands": RGB_BANDS, "image_size": self.image_size,
            "resize": self.interpolation, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "value_scale": 1 / 255,
            "value_range": {"rgb": (0.0, 255.0)}, "input_format": "rgb",
        }  # fmt: skip

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
            cap = self.split_cap(split)
            if cap is not None:
                source = source.subset(np.arange(min(cap, len(source))))
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
        labels_file = super().save_observed_labels(out_dir)
        rows = []
        for split, dataset in self.datasets.items():
            for sid, path in zip(dataset.ids, dataset.image_paths, strict=True):
                # Readers build paths as root / relative path: show them relative (pure path arithmetic).
                shown = path.relative_to(self.root) if self.root and path.is_relative_to(self.root) else path
                rows.append((sid, split, shown.as_posix()))
        write_rows(out_dir / "data_splits.csv", ("id", "split", "path"), rows)
        if self.skipped:
            write_rows(out_dir / "skipped_items.csv", ("item", "reason"), self.skipped)
        return labels_file
