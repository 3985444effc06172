"""Structured configs of the datamodules: one dataclass per datamodule, mirroring its constructor.

:class:`SplitDataModuleConfig` holds the options every datamodule shares (the loader settings,
``augment``, ``max_samples``, ``seed``: :class:`~splml.data.datamodules.base.SplitDataModule`);
each family adds its own (:class:`ReBENDataModuleConfig`, :class:`ImageDataModuleConfig`, ...).
A new datamodule subclasses the nearest one, adds its constructor's options with the same
defaults, and registers it in :data:`DATAMODULE_SCHEMAS`; its dataset YAML then starts with

    defaults:
      - /schema/datamodule/<name>@datamodule
      - _self_

(a YAML without that line stays untyped and works as before). A test checks every schema
against its class's constructor: the same option names and the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splml.utils.constraints import at_least, between, one_of, optional_at_least


@dataclass
class MaxSamplesConfig:
    """First N items per split (None = the whole split)."""

    train: int | None = optional_at_least(1, default=None)
    validation: int | None = optional_at_least(1, default=None)
    test: int | None = optional_at_least(1, default=None)


@dataclass
class AugmentConfig:
    """The recorded training augmentation (:class:`splml.data.transforms.RecordedSpatialAugment`)."""

    # Random resized crop: [min, max] area fraction (null = no crop), aspect ratio range.
    crop_scale: list[float] | None = None
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    vflip: bool = True


@dataclass
class ImageAugmentConfig(AugmentConfig):
    """RGB images add pixel-level albumentations transforms (``[{name: ColorJitter, ...}]``)."""

    photometric: list[Any] = field(default_factory=list)


@dataclass
class SplitDataModuleConfig:
    """What every datamodule takes (:class:`~splml.data.datamodules.base.SplitDataModule`)."""

    _target_: str = "???"
    batch_size: int = at_least(1, default=32, meaning="the batch size per process")
    eval_batch_size: int | None = optional_at_least(1, default=None)
    num_workers: int = at_least(0, default=0)
    pin_memory: bool = False
    persistent_workers: bool = False
    # Batches loaded ahead per worker (None: torch's default) and crops/flips on the device
    # (true, "auto", false; splml.data.datamodules.base, conf/loader/gpu.yaml).
    prefetch_factor: int | None = optional_at_least(1, default=None)
    augment_on_device: Any = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_samples: MaxSamplesConfig = field(default_factory=MaxSamplesConfig)
    seed: int = 0


@dataclass
class ReBENFormatConfig(SplitDataModuleConfig):
    """What every reBEN-format datamodule takes: the band set, the input size, the accepted values."""

    # A named band set (all, s2, s1, rgb, s2_full, all_full) or a list of band names.
    bands: Any = "all"
    image_size: int = at_least(1, default=120, meaning="the network input side in pixels")
    upsampling: str = one_of("nearest", "bilinear", default="nearest")
    include_snow_cloud: bool = False
    lmdb_path: str | None = None
    metadata_path: str | None = None
    value_range: dict[str, list[float] | None] | None = field(
        default_factory=lambda: {"s2": [0.0, 65535.0], "s1": [-100.0, 60.0]}
    )


@dataclass
class ReBENDataModuleConfig(ReBENFormatConfig):
    """reBEN-format files (:class:`~splml.data.datamodules.reben.ReBENDataModule`)."""

    _target_: str = "splml.data.datamodules.reben.ReBENDataModule"
    root: str | None = None


@dataclass
class SyntheticSizesConfig:
    """The embedded dataset's generator settings (:class:`splml.data.synthetic.SyntheticConfig`)."""

    n_train: int = at_least(0, default=1200)
    n_validation: int = at_least(0, default=400)
    n_test: int = at_least(0, default=400)
    seed: int = at_least(0, default=0)
    with_reference_maps: bool = True
    difficulty: float = at_least(0, default=1.0)


@dataclass
class SyntheticDataModuleConfig(ReBENFormatConfig):
    """The embedded synthetic dataset (:class:`~splml.data.datamodules.reben.SyntheticReBENDataModule`)."""

    _target_: str = "splml.data.datamodules.reben.SyntheticReBENDataModule"
    cache_dir: str = "???"
    synthetic: SyntheticSizesConfig = field(default_factory=SyntheticSizesConfig)


@dataclass
class ImageDataModuleConfig(SplitDataModuleConfig):
    """RGB image collections (:class:`~splml.data.datamodules.images.ImageDataModule`)."""

    root: str | None = None
    image_size: int = at_least(1, default=224, meaning="the network input side in pixels")
    interpolation: str = one_of("nearest", "bilinear", "bicubic", "lanczos", default="bilinear")
    val_fraction: float = between(0, 0.99, default=0.2)
    split_seed: int = 1200
    skip_bad: bool = False
    augment: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)


@dataclass
class LabelTableDataModuleConfig(ImageDataModuleConfig):
    """Image folders with one label table (:class:`~splml.data.datamodules.image_folders.LabelTableDataModule`)."""

    _target_: str = "splml.data.datamodules.image_folders.LabelTableDataModule"
    labels_file: str = "labels.csv"
    class_names: list[str] = field(default_factory=list)
    images_dir: str | None = "images"
    split_dirs: dict[str, str] | None = None
    test_fraction: float = between(0, 0.99, default=0.2)
    display_name: str = "image folder dataset"


@dataclass
class AIDDataModuleConfig(ImageDataModuleConfig):
    """AID-multilabel as distributed (:class:`~splml.data.datamodules.image_folders.AIDDataModule`)."""

    _target_: str = "splml.data.datamodules.image_folders.AIDDataModule"
    labels_file: str = "multilabel.csv"
    train_dir: str = "images_tr"
    test_dir: str = "images_test"
    display_name: str = "AID-multilabel"


@dataclass
class SPMLFilesDataModuleConfig(ImageDataModuleConfig):
    """The SPML literature's formatted files (:class:`~splml.data.datamodules.spml_files.SPMLFilesDataModule`)."""

    _target_: str = "splml.data.datamodules.spml_files.SPMLFilesDataModule"
    name: str = "coco"
    num_classes: int = at_least(1, default=80)
    images_dir: str = "."
    class_names: list[str] | None = None
    check_files: bool = True


@dataclass
class ImageNetDataModuleConfig(ImageDataModuleConfig):
    """ILSVRC2012 with ReaL as the test labels (:class:`~splml.data.datamodules.imagenet.ImageNetDataModule`)."""

    _target_: str = "splml.data.datamodules.imagenet.ImageNetDataModule"
    num_classes: int = at_least(1, default=1000)
    train_dir: str = "train"
    val_dir: str = "val"
    val_labels: str = one_of("auto", "folders", "devkit", "loc", default="auto")
    devkit_dir: str = "ILSVRC2012_devkit_t12/data"
    real_file: str | None = "real.json"
    # Evaluation view: the centre crop's share of the resized shorter side (null: the whole image).
    eval_crop_fraction: float | None = 224 / 256
    val_fraction: float = between(0, 0.99, default=0.01)


#: Schema name (``/schema/datamodule/<name>`` in a dataset YAML) -> dataclass.
DATAMODULE_SCHEMAS: dict[str, type[SplitDataModuleConfig]] = {
    "reben": ReBENDataModuleConfig,
    "synthetic": SyntheticDataModuleConfig,
    "label_table": LabelTableDataModuleConfig,
    "aid": AIDDataModuleConfig,
    "spml_files": SPMLFilesDataModuleConfig,
    "imagenet": ImageNetDataModuleConfig,
}
