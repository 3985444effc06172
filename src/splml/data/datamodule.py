"""LightningDataModules for reBEN-format data (the real files and the embedded synthetic set)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from splml.data.labels import LabelSource, RandomSinglePositive, save_observed
from splml.data.reben import ReBENDataset, read_metadata, reference_map_to_class_counts
from splml.data.reben_format import (
    CLASS_NAMES,
    METADATA_FILE,
    PATCH_SIZE,
    VALUE_RANGES,
    resolve_band_set,
    resolve_value_range,
)
from splml.data.sampler import EpochSeededSampler
from splml.data.transforms import RecordedSpatialAugment
from splml.data.views import MultiViewDataset

log = logging.getLogger(__name__)


class SplitDataModule(L.LightningDataModule):
    """What every datamodule of the suite shares: the three splits and how they are loaded.

    Subclasses fill ``self.datasets`` (train / validation / test) in ``setup``. Loaders use
    :class:`EpochSeededSampler`, which also splits the data across DDP ranks, so the training
    order and augmentation draws depend only on (seed, epoch, index) and every sample is
    evaluated exactly once.

    ``train_views`` > 1 (set with :meth:`set_train_views`; contrastive training) makes every
    training item carry that many augmented views of its image (:class:`MultiViewDataset`).
    """

    #: Augmented views per training image (1 = the plain batch contract).
    train_views: int = 1

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = int(seed)
        self.datasets: dict[str, Any] = {}
        # Database loaders by (rank, world size), reused across evaluations.
        self._database_loaders: dict[tuple[int, int], DataLoader] = {}

    def set_train_views(self, views: int) -> None:
        """Deliver ``views`` augmented views per training image (a B x V x C x H x W batch) from now on."""
        if int(views) != views or views < 1:
            raise ValueError(f"train_views must be a positive integer, got {views!r}")
        self.train_views = int(views)

    def _loader(
        self, split: str, *, train: bool, dataset: Any = None, rank: int | None = None, world_size: int | None = None
    ) -> DataLoader:
        dataset = self.datasets[split] if dataset is None else dataset
        if rank is None or world_size is None:
            trainer = getattr(self, "trainer", None)
            rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # Trainers set use_distributed_sampler=false: this sampler splits across ranks itself.
        sampler = EpochSeededSampler(len(dataset), seed=self.seed, shuffle=train, rank=rank, world_size=world_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=False,  # every sample counts, in training and in evaluation
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        if self.train_views > 1:
            train = MultiViewDataset(train, self.train_views)
        return self._loader("train", train=True, dataset=train)

    def database_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The training split without augmentation, in order: the database of retrieval evaluation.

        Split across ranks like the evaluation loaders (the caller gathers and deduplicates). Built
        once per (rank, world size) and reused, so persistent workers are not restarted each epoch.
        """
        key = (rank, world_size)
        if key not in self._database_loaders:
            plain = without_augmentation(self.datasets["train"])
            self._database_loaders[key] = self._loader(
                "train", train=False, dataset=plain, rank=rank, world_size=world_size
            )
        return self._database_loaders[key]

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def without_augmentation(dataset: Any) -> Any:
    """A shallow copy of ``dataset`` that renders every item as evaluation does (no ``transform``)."""
    plain = copy.copy(dataset)
    plain.transform = None
    return plain


class ReBENDataModule(SplitDataModule):
    """reBEN train/validation/test splits with simulated single-positive training labels.

    Validation and test always carry the full labels as ``observed`` too; only the training
    split goes through the label source. ``max_samples`` caps each split (first rows, in
    metadata order) for quick runs.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        bands: str | Sequence[str] = "all",
        image_size: int = PATCH_SIZE,
        upsampling: str = "nearest",
        include_snow_cloud: bool = False,
        labels: LabelSource | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        augment: dict[str, Any] | None = None,
        max_samples: dict[str, int] | None = None,
        lmdb_path: str | Path | None = None,
        metadata_path: str | Path | None = None,
        seed: int = 0,
        value_range: dict[str, Sequence[float] | None] | None = VALUE_RANGES,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, seed)
        self.root = Path(root) if root is not None else None
        self.bands = resolve_band_set(bands)
        self.image_size = image_size
        self.upsampling = upsampling
        self.include_snow_cloud = include_snow_cloud
        self.label_source = labels if labels is not None else RandomSinglePositive()
        self.augment = dict(augment or {})
        self.max_samples = dict(max_samples or {})
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
            cap = self.max_samples.get(split)
            if cap is not None:  # null in the config = the whole split
                records = records[: int(cap)]
            transform = RecordedSpatialAugment(**self.augment) if split == "train" and self.augment else None
            self.datasets[split] = ReBENDataset(
                root, split, bands=self.bands, image_size=self.image_size, upsampling=self.upsampling,
                lmdb_path=self.lmdb_path, metadata_path=metadata_path, transform=transform, records=records,
                value_range=self.value_range,
            )  # fmt: skip
        train = self.datasets["train"]
        ids = [r.patch_id for r in train.records]

        def class_counts(i: int) -> np.ndarray:
            return reference_map_to_class_counts(train.read_reference_map(i))

        train.set_observed(
            self.label_source.observe(train.targets, ids=ids, class_names=CLASS_NAMES, class_counts=class_counts)
        )
        log.info(
            "reBEN data from %s: %s patches (train/validation/test), labels=%s, bands=%s",
            root, "/".join(str(len(self.datasets[s])) for s in ("train", "validation", "test")),
            self.label_source.name, ",".join(self.bands),
        )  # fmt: skip

    def save_observed_labels(self, out_dir: Path) -> Path:
        """Save the training split's observed labels next to the run (npy + readable CSV)."""
        train = self.datasets["train"]
        stem = Path(out_dir) / "observed_train_labels"
        save_observed(stem, train.observed, [r.patch_id for r in train.records], CLASS_NAMES)
        return stem.with_suffix(".npy")


class SyntheticReBENDataModule(ReBENDataModule):
    """The embedded synthetic dataset: reBEN files generated on first use into ``cache_dir``."""

    def __init__(self, cache_dir: str | Path, synthetic: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(root=None, **kwargs)
        self.cache_dir = Path(cache_dir)
        self.synthetic = dict(synthetic or {})

    def prepare_data(self) -> None:
        self.resolve_root()

    def resolve_root(self) -> Path:
        if self.root is None:
            from splml.data.synthetic import SyntheticConfig, ensure_synthetic

            self.root = ensure_synthetic(self.cache_dir, SyntheticConfig(**self.synthetic))
        return self.root
