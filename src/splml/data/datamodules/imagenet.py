"""ImageNet-1K (ILSVRC2012) with the ReaL multi-label relabelling of its validation set (``dataset=imagenet``).

Splits: ``train`` = the official training images (one folder per synset) less the carved
validation, each with its single ImageNet label; ``validation`` = ``val_fraction`` of the
official training images drawn with ``split_seed`` (single labels), or, with ``val_fraction: 0``,
the official validation set itself (then the checkpoint must not be chosen on it: the
``table_imagenet_real`` preset reports the last epoch, as the paper does); ``test`` = the
official validation set with ReaL's label sets as targets, its ImageNet label as
``original_label``, and ``has_target`` False for the images ReaL left out (an empty list).

Layouts under ``root`` (``train_dir``, ``val_dir``):

* ``train/<wnid>/*.JPEG`` (the class list: the sub-folders, sorted; must number ``num_classes``);
* validation labels (``val_labels``): ``folders`` = ``val/<wnid>/ILSVRC2012_val_*.JPEG``;
  ``devkit`` = flat ``val/ILSVRC2012_val_*.JPEG`` with ``<devkit_dir>/ILSVRC2012_validation_ground_truth.txt``
  and ``<devkit_dir>/meta.mat``; ``loc`` = flat with ``LOC_val_solution.csv``; ``auto`` = the
  first of these that is present;
* ``real_file`` (default ``real.json`` in ``root``); ``null`` evaluates on the single labels.

Every listed image must exist and every image found must have a label (else an error naming
them, or with ``skip_bad`` a logged count and ``skipped_items.csv``); a validation image without
a ``real.json`` entry is an error too (``skip_bad`` keeps it for top-1 and leaves it out of the
ReaL metrics, listed in the same file). Images with an empty ReaL list are kept for top-1,
left out of the multi-label metrics and counted (``test/num_samples_without_labels``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from splml.data.datamodules.images import ImageDataModule
from splml.data.datasets.imagenet import (
    DEFAULT_EVAL_CROP_FRACTION,
    ImageNetDataset,
    ImageNetTrainAugment,
    class_folders,
    list_images,
)
from splml.data.datasets.images import SplitSource, seeded_split
from splml.io.errors import DataFormatError
from splml.io.imagenet import (
    GROUND_TRUTH_FILE,
    LOC_VAL_SOLUTION_FILE,
    META_FILE,
    REAL_FILE,
    label_sets_to_matrix,
    read_devkit_ground_truth,
    read_devkit_meta,
    read_loc_val_solution,
    read_real_labels,
    val_image_number,
    val_image_stem,
)

log = logging.getLogger(__name__)

#: Where the validation labels may come from (``val_labels``).
VAL_LABEL_SOURCES = ("auto", "folders", "devkit", "loc")


class ImageNetDataModule(ImageDataModule):
    """ILSVRC2012 train / carved validation / official validation with ReaL (see the module docstring)."""

    display_name = "ImageNet"

    def __init__(
        self,
        root: str | Path | None = None,
        num_classes: int = 1000,
        train_dir: str = "train",
        val_dir: str = "val",
        val_labels: str = "auto",
        devkit_dir: str = "ILSVRC2012_devkit_t12/data",
        real_file: str | None = REAL_FILE,
        eval_crop_fraction: float | None = DEFAULT_EVAL_CROP_FRACTION,
        val_fraction: float = 0.01,
        **options: Any,
    ) -> None:
        super().__init__(root=root, val_fraction=val_fraction, **options)
        if val_labels not in VAL_LABEL_SOURCES:
            raise ValueError(f"val_labels must be one of {VAL_LABEL_SOURCES}, got {val_labels!r}")
        self.expected_classes = int(num_classes)
        self.train_dir, self.val_dir, self.val_labels = train_dir, val_dir, val_labels
        self.devkit_dir, self.real_file = devkit_dir, real_file
        self.eval_crop_fraction = eval_crop_fraction
        self._class_names: tuple[str, ...] | None = None
        #: The test split's ImageNet label and ReaL membership, filled by read_sources.
        self._test_original: np.ndarray | None = None
        self._test_has_target: np.ndarray | None = None

    # -- classes ------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The WNIDs, sorted (n01440764 = 0): torchvision's, timm's and real.json's class order."""
        if self._class_names is None:
            folder = self.resolve_root() / self.train_dir
            if not folder.is_dir():
                raise FileNotFoundError(f"ImageNet training folder not found: {folder} (dataset.datamodule.train_dir)")
            names = tuple(class_folders(folder))
            if len(names) != self.expected_classes:
                raise DataFormatError(
                    f"{folder} has {len(names)} class folders but dataset.num_classes is {self.expected_classes} "
                    f"(first: {list(names[:3])}); an incomplete copy, or set dataset.num_classes"
                )
            self._class_names = names
        return self._class_names

    @property
    def num_classes(self) -> int:
        """``dataset.num_classes`` (the class folders are checked against it when they are read)."""
        return self.expected_classes

    def _class_index(self) -> dict[str, int]:
        return {wnid: c for c, wnid in enumerate(self.class_names)}

    # -- reading ------------------------------------------------------------------------------
    def read_train(self, root: Path) -> SplitSource:
        """Every image of ``train/<wnid>/``, class by class, with its one-hot label."""
        paths: list[Path] = []
        labels: list[int] = []
        for c, wnid in enumerate(self.class_names):
            files = list_images(root / self.train_dir / wnid)
            paths += files
            labels += [c] * len(files)
        targets = np.zeros((len(paths), self.num_classes), dtype=np.uint8)
        targets[np.arange(len(paths)), labels] = 1
        ids = tuple(p.relative_to(root / self.train_dir).as_posix() for p in paths)
        return SplitSource(tuple(paths), targets, ids)

    def _val_source_kind(self, folder: Path) -> str:
        if self.val_labels != "auto":
            return self.val_labels
        if class_folders(folder):
            return "folders"
        devkit = self.resolve_root() / self.devkit_dir
        if (devkit / GROUND_TRUTH_FILE).is_file():
            return "devkit"
        if (self.resolve_root() / LOC_VAL_SOLUTION_FILE).is_file():
            return "loc"
        raise FileNotFoundError(
            f"no validation labels found: neither class folders in {folder}, nor {devkit / GROUND_TRUTH_FILE}, nor "
            f"{self.resolve_root() / LOC_VAL_SOLUTION_FILE} (dataset.datamodule.val_labels / devkit_dir)"
        )

    def read_validation_labels(self, root: Path) -> tuple[dict[int, str], dict[int, Path], str]:
        """(image number -> WNID, image number -> file found, where the labels came from)."""
        folder = root / self.val_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet validation folder not found: {folder} (dataset.datamodule.val_dir)")
        kind = self._val_source_kind(folder)
        files: dict[int, Path] = {}
        unnamed: list[tuple[str, str]] = []
        if kind == "folders":
            labels = {}
            for wnid in class_folders(folder):
                for path in list_images(folder / wnid):
                    number = val_image_number(path.name)
                    if number is None:
                        unnamed.append((path.relative_to(root).as_posix(), "not named ILSVRC2012_val_<8 digits>"))
                        continue
                    labels[number], files[number] = wnid, path
            source = f"class folders of {folder}"
        else:
            for path in list_images(folder):
                number = val_image_number(path.name)
                if number is None:
                    unnamed.append((path.relative_to(root).as_posix(), "not named ILSVRC2012_val_<8 digits>"))
                else:
                    files[number] = path
            if kind == "devkit":
                devkit = root / self.devkit_dir
                wnids = read_devkit_ground_truth(devkit / GROUND_TRUTH_FILE, read_devkit_meta(devkit / META_FILE))
                labels = {i + 1: wnid for i, wnid in enumerate(wnids)}
                source = str(devkit / GROUND_TRUTH_FILE)
            else:
                labels = read_loc_val_solution(root / LOC_VAL_SOLUTION_FILE)
                source = str(root / LOC_VAL_SOLUTION_FILE)
        self.report_bad(unnamed, f"ImageNet validation images in {folder}")
        return labels, files, source

    def read_test(self, root: Path) -> SplitSource:
        """The official validation set: ReaL label sets as targets, plus the ImageNet label of each image."""
        labels, files, source = self.read_validation_labels(root)
        index = self._class_index()
        unknown = sorted({w for w in labels.values() if w not in index})
        if unknown:
            raise DataFormatError(f"{source}: WNIDs {unknown[:5]} are not class folders of {root / self.train_dir}")
        real = read_real_labels(self._real_path(root), self.num_classes) if self.real_file else None
        listed = set(labels) | (set(range(1, len(real) + 1)) if real is not None else set())
        bad = [(val_image_stem(n), f"image not found in {root / self.val_dir}") for n in sorted(listed - set(files))]
        bad += [(files[n].name, f"no label in {source}") for n in sorted(set(files) - set(labels))]
        self.report_bad(bad, f"ImageNet validation ({source})")
        numbers = sorted(set(files) & set(labels))
        without_entry = [n for n in numbers if real is not None and n > len(real)]
        self.report_bad(
            [
                (val_image_stem(n), f"no entry in {self.real_file} (left out of the ReaL metrics)")
                for n in without_entry
            ],
            f"ReaL labels {self._real_path(root)} ({len(real or ())} entries)",
        )
        original = np.array([index[labels[n]] for n in numbers], dtype=np.int64)
        if real is None:
            targets = np.zeros((len(numbers), self.num_classes), dtype=np.uint8)
            targets[np.arange(len(numbers)), original] = 1
            has_target = np.ones(len(numbers), dtype=bool)
        else:
            sets = [real[n - 1] if n <= len(real) else () for n in numbers]
            targets = label_sets_to_matrix(sets, self.num_classes)
            has_target = np.array([len(s) > 0 for s in sets], dtype=bool)
            log.info(
                "ReaL %s: %d of %d validation images have labels (%.2f per image); %d left out of the ReaL metrics",
                self._real_path(root), int(has_target.sum()), len(numbers),
                float(targets[has_target].sum(1).mean()) if has_target.any() else float("nan"),
                int((~has_target).sum()),
            )  # fmt: skip
        self._test_original, self._test_has_target = original, has_target
        paths = tuple(files[n] for n in numbers)
        return SplitSource(paths, targets, tuple(val_image_stem(n) for n in numbers))

    def _real_path(self, root: Path) -> Path:
        path = Path(str(self.real_file))
        return path if path.is_absolute() else root / path

    def read_sources(self, root: Path) -> tuple[SplitSource, SplitSource]:
        return self.read_train(root), self.read_test(root)

    def load_sources(self) -> tuple[SplitSource, SplitSource]:
        # The base class requires a positive per test row; ReaL's left-out images have none, by design.
        root = self.resolve_root()
        self.skipped = []
        pool, test = self.read_sources(root)
        if len(pool) == 0 or len(test) == 0:
            raise DataFormatError(f"ImageNet under {root}: no training or no validation image found")
        return pool, test

    # -- setup --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pool, test = self.load_sources()
        observed_pool = self.observe_pool(pool)
        pool_labels = pool.targets.argmax(1)
        if self.val_fraction > 0:
            train_rows, val_rows = seeded_split(len(pool), self.val_fraction, self.split_seed)
        else:
            train_rows, val_rows = np.arange(len(pool)), None
        common = {
            "image_size": self.image_size, "interpolation": self.interpolation, "class_names": self.class_names,
            "eval_crop_fraction": self.eval_crop_fraction,
        }  # fmt: skip
        train = pool.subset(self._capped("train", train_rows))
        transform = ImageNetTrainAugment(self.image_size, interpolation=self.interpolation, **self.augment)
        self.datasets["train"] = ImageNetDataset(
            train.paths, train.targets, train.ids, transform=transform, name="ImageNet train", **common
        )
        self.datasets["train"].set_observed(observed_pool[self._capped("train", train_rows)])
        test_rows = self._capped("test", np.arange(len(test)))
        assert self._test_original is not None and self._test_has_target is not None
        test_split = test.subset(test_rows)
        self.datasets["test"] = ImageNetDataset(
            test_split.paths, test_split.targets, test_split.ids, name="ImageNet validation (test split)",
            original_labels=self._test_original[test_rows], has_target=self._test_has_target[test_rows], **common,
        )  # fmt: skip
        if val_rows is None:
            self.datasets["validation"] = self.datasets["test"]
            log.warning(
                "ImageNet: val_fraction=0 trains on every training image and validates on the official validation "
                "set, which is also the test split: report the last epoch, not a checkpoint chosen on it"
            )
        else:
            rows = self._capped("validation", val_rows)
            val = pool.subset(rows)
            self.datasets["validation"] = ImageNetDataset(
                val.paths, val.targets, val.ids, name="ImageNet validation (carved from train)",
                original_labels=pool_labels[rows], has_target=np.ones(len(rows), dtype=bool), **common,
            )  # fmt: skip
        log.info(
            "ImageNet from %s: %s images (train/validation/test), labels=%s, %d px",
            self.root, "/".join(str(len(self.datasets[s])) for s in ("train", "validation", "test")),
            self.label_source.name, self.image_size,
        )  # fmt: skip

    def _capped(self, split: str, rows: np.ndarray) -> np.ndarray:
        cap = self.split_cap(split)
        return rows if cap is None else rows[:cap]
