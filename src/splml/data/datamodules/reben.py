"""LightningDataModules for reBEN-format data (the real files and the embedded synthetic set)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.data.datamodules.base import SplitDataModule
from splml.data.datasets.reben import ReBENDataset
from splml.data.synthetic import SyntheticConfig, ensure_synthetic
from splml.data.transforms import DeferredSpatialAugment, RecordedSpatialAugment
from splml.io.reben.format import (
    BAND_STATS,
    CLASS_NAMES,
    METADATA_FILE,
    PATCH_SIZE,
    SPLITS,
    VALUE_RANGES,
    resolve_band_set,
    resolve_value_range,
)
from splml.io.reben.metadata import read_metadata, reference_map_to_class_counts

log = logging.getLogger(__name__)


class ReBENDataModule(SplitDataModule):
    """reBEN train/validation/test splits with simulated single-positive training labels.

    Validation and test always carry the full labels as ``observed`` too; only the training
    split goes through the label source. ``max_samples`` caps each split (first rows, in
    metadata order) for quick runs. The label source, augmentation and loader options are
    those of :class:`~splml.data.datamodules.base.SplitDataModule`; the augmentation can run on
    the device (``augment_on_device``): every item has the same size and is cropped from itself.
    """

    device_augment_supported = True

    def __init__(
        self,
        root: str | Path | None = None,
        bands: str | Sequence[str] = "all",
        image_size: int = PATCH_SIZE,
        upsampling: str = "nearest",
        include_snow_cloud: bool = False,
        lmdb_path: str | Path | None = None,
        metadata_path: str | Path | None = None,
        value_range: dict[str, Sequence[float] | None] | None = VALUE_RANGES,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root) if root is not None else None
        self.bands = resolve_band_set(bands)
        self.image_size = image_size
        self.upsampling = upsampling
        self.include_snow_cloud = include_snow_cloud
        self.lmdb_path = lmdb_path
        self.metadata_path = metadata_path
        self.value_range = resolve_value_range(value_range)  # checked here, before any data is read

    # -- facts the model and the losses need -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    def input_spec(self) -> dict[str, Any]:
        """What the network reads (:class:`splml.io.checkpoint.DataSpec`): the bands in channel order with the
        official statistics they are normalised with, the accepted raw values, the size and the upsampling."""
        return {
            "class_names": CLASS_NAMES, "bands": self.bands, "image_size": int(self.image_size),
            "resize": self.upsampling, "mean": tuple(BAND_STATS[b][0] for b in self.bands),
            "std": tuple(BAND_STATS[b][1] for b in self.bands), "value_scale": 1.0,
            "value_range": dict(self.value_range), "input_format": "reben",
        }  # fmt: skip

    # -- setup ------------------------------------------------------------------------------
    def resolve_root(self) -> Path:
        if self.root is None:
            raise ValueError("dataset.root is not set: point it at the folder holding metadata.parquet and the LMDB")
        if not self.root.exists():
            raise FileNotFoundError(f"dataset root {self.root} does not exist")
        return self.root

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        root = self.resolve_root()
        metadata_path = Path(self.metadata_path) if self.metadata_path else root / METADATA_FILE
        by_split = read_metadata(metadata_path, include_snow_cloud=self.include_snow_cloud)
        for split, records in by_split.items():
            cap = self.split_cap(split)
            if cap is not None:
                records = records[:cap]
            transform = self.train_augment() if split == "train" and self.augment else None
            self.datasets[split] = ReBENDataset(
                root, split, bands=self.bands, image_size=self.image_size, upsampling=self.upsampling,
                lmdb_path=self.lmdb_path, metadata_path=metadata_path, transform=transform, records=records,
                value_range=self.value_range,
            )  # fmt: skip
        train = self.datasets["train"]

        def class_counts(i: int) -> np.ndarray:
            return reference_map_to_class_counts(train.read_reference_map(i))

        train.set_observed(
            self.label_source.observe(train.targets, ids=train.ids, class_names=CLASS_NAMES, class_counts=class_counts)
        )
        log.info(
            "reBEN data from %s: %s patches (train/validation/test), labels=%s, bands=%s",
            root, "/".join(str(len(self.datasets[s])) for s in ("train", "validation", "test")),
            self.label_source.name, ",".join(self.bands),
        )  # fmt: skip

    def train_augment(self) -> RecordedSpatialAugment:
        """The recorded augmentation of the training split; only its record when it runs on the device."""
        if self.augment_on_device:
            return DeferredSpatialAugment(self.image_size, **self.augment)
        return RecordedSpatialAugment(**self.augment)


class SyntheticReBENDataModule(ReBENDataModule):
    """The embedded synthetic dataset: reBEN files generated on first use into ``cache_dir``.

    With ``max_samples`` only the patches a run uses are generated (the first N of each split,
    byte for byte those of the whole dataset, cached beside it); without, the whole dataset.
    """

    def __init__(self, cache_dir: str | Path, synthetic: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(root=None, **kwargs)
        self.cache_dir = Path(cache_dir)
        self.synthetic = dict(synthetic or {})

    def prepare_data(self) -> None:
        self.resolve_root()

    def resolve_root(self) -> Path:
        if self.root is None:
            first = {split: self.split_cap(split) for split in SPLITS}
            self.root = ensure_synthetic(self.cache_dir, SyntheticConfig(**self.synthetic), first=first)
        return self.root
