"""What every datamodule of the suite shares: the three splits, how they are loaded, the label source.

Loading policy lives here once (batch sizes, workers, pinned memory, prefetching, the sampler,
the drop-last rule, multi-view batches, augmentation on the device); the datamodules of each
collection only say how to build their datasets (:mod:`splml.data.datasets`) and take these
options as keyword arguments.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from splml.data.labels import LabelSource, RandomSinglePositive
from splml.data.sampler import EpochSeededSampler
from splml.data.transforms import apply_recorded_augment
from splml.data.views import MultiViewDataset
from splml.io.label_files import OBSERVED_LABELS_STEM, save_observed


class SplitDataModule(L.LightningDataModule):
    """The train / validation / test splits of one collection and their loaders.

    Subclasses fill ``self.datasets`` (train / validation / test) in ``setup``. Loaders use
    :class:`EpochSeededSampler`, which also splits the data across DDP ranks, so the training
    order and augmentation draws depend only on (seed, epoch, index) and every sample is
    evaluated exactly once; no batch is ever dropped (``drop_last=False``), in training as in
    evaluation.

    Options every collection shares: ``labels`` (the label source of the training split,
    default :class:`RandomSinglePositive`), ``augment`` (the training augmentation's options),
    ``max_samples`` (first N items per split, ``None`` = all) and the loader settings
    ``batch_size`` (per process), ``eval_batch_size`` (default: ``batch_size``), ``num_workers``,
    ``pin_memory``, ``persistent_workers`` and ``prefetch_factor`` (batches loaded ahead per
    worker; both only with workers) and ``seed``.

    ``augment_on_device`` moves the training augmentation's pixels to the device: the loader
    workers only draw the record (``aug``: crop box and flips, the same draws from the same
    per-sample seeds) and :meth:`on_after_batch_transfer` crops and flips the whole batch where
    it lies. ``true`` requires it (an error for datamodules that cannot: their crops are cut
    from full-resolution sources of different sizes), ``"auto"`` uses it where the datamodule
    can (:attr:`device_augment_supported`), ``false`` never.

    ``train_views`` > 1 (set with :meth:`set_train_views`; contrastive training) makes every
    training item carry that many augmented views of its image (:class:`MultiViewDataset`).
    """

    #: Augmented views per training image (1 = the plain batch contract).
    train_views: int = 1
    #: Every sample counts, in training and in evaluation.
    drop_last: bool = False
    #: Whether this collection's training augmentation can be applied to a batch on the device
    #: (items of one size whose crop is cut from the item itself).
    device_augment_supported: bool = False

    def __init__(
        self,
        *,
        labels: LabelSource | None = None,
        augment: dict[str, Any] | None = None,
        max_samples: dict[str, int | None] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        augment_on_device: bool | str = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.label_source = labels if labels is not None else RandomSinglePositive()
        self.augment = dict(augment or {})
        self.max_samples = dict(max_samples or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        if prefetch_factor is not None and (int(prefetch_factor) != prefetch_factor or prefetch_factor < 1):
            raise ValueError(
                f"dataset.datamodule.prefetch_factor must be an integer >= 1 or null, got {prefetch_factor!r}"
            )
        # torch refuses a prefetch factor without workers (the main process loads one batch at a time).
        self.prefetch_factor = int(prefetch_factor) if prefetch_factor is not None and num_workers > 0 else None
        self.augment_on_device = self._resolve_augment_on_device(augment_on_device)
        self.seed = int(seed)
        self.datasets: dict[str, Any] = {}
        # Database loaders by (rank, world size), reused across evaluations.
        self._database_loaders: dict[tuple[int, int], DataLoader] = {}

    def _resolve_augment_on_device(self, option: bool | str) -> bool:
        if option not in (True, False, "auto"):
            raise ValueError(f"dataset.datamodule.augment_on_device must be true, false or auto, got {option!r}")
        if option is True and not self.device_augment_supported:
            raise ValueError(
                f"dataset.datamodule.augment_on_device=true: {type(self).__name__} cuts its training crops from "
                "full-resolution sources in the loader, so they cannot be applied to a batch on the device; "
                "use augment_on_device=auto (the device where possible) or false"
            )
        return bool(option) and self.device_augment_supported and bool(self.augment)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Crop and flip a training batch whose items carry only the record (``augment_on_device``)."""
        if isinstance(batch, dict) and "augment_on_device" in batch:
            del batch["augment_on_device"]
            batch["image"] = apply_recorded_augment(batch["image"], batch["aug"])
        return batch

    def set_train_views(self, views: int) -> None:
        """Deliver ``views`` augmented views per training image (a B x V x C x H x W batch) from now on."""
        if int(views) != views or views < 1:
            raise ValueError(f"train_views must be a positive integer, got {views!r}")
        self.train_views = int(views)

    def split_cap(self, split: str) -> int | None:
        """How many items of ``split`` to keep (``max_samples``; None = the whole split)."""
        cap = self.max_samples.get(split)
        return None if cap is None else int(cap)  # null in the config = the whole split

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
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            prefetch_factor=self.prefetch_factor,
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

    def train_ids(self) -> list[str]:
        """The ids of the training split's items, in order (patch ids, image stems, relative paths)."""
        return list(self.datasets["train"].ids)

    def save_observed_labels(self, out_dir: Path) -> Path:
        """Save the training split's observed labels next to the run (npy + readable CSV); returns the npy."""
        stem = Path(out_dir) / OBSERVED_LABELS_STEM
        save_observed(stem, self.datasets["train"].observed, self.train_ids(), self.class_names)
        return stem.with_suffix(".npy")


def without_augmentation(dataset: Any) -> Any:
    """A shallow copy of ``dataset`` that renders every item as evaluation does (no ``transform``)."""
    plain = copy.copy(dataset)
    plain.transform = None
    return plain
