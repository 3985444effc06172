"""Image folders + a label table: AID-multilabel, ML-AID, DLRSD (UC Merced multi-label), WHDLD.

The datamodule indexes the folders, parses the table (:mod:`splml.data.datasets.image_folders`),
matches the two by stem and reports both kinds of mismatch (an image without a label row, a
label row without an image): an error naming them, or with ``skip_bad=true`` a logged count and
``skipped_items.csv`` next to the run.

Splits: with ``split_dirs`` (AID: ``images_tr`` / ``images_test``) the folders are the official
train and test sets; without, the test set is carved from all images with
:func:`~splml.data.datasets.images.seeded_split` (``test_fraction``, ``split_seed``). The
validation set is always carved from the training pool by the base class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from splml.data.datamodules.images import ImageDataModule
from splml.data.datasets.image_folders import AID_CLASSES, index_images, read_label_table
from splml.data.datasets.images import SplitSource, seeded_split
from splml.io.errors import DataFormatError


class LabelTableDataModule(ImageDataModule):
    """Image folders + one label table (DLRSD, WHDLD, ML-AID; AID through :class:`AIDDataModule`).

    ``images_dir`` (relative to ``root``) is indexed recursively when the collection has no
    official split; ``split_dirs = {"train": ..., "test": ...}`` uses folders as the official
    split instead. ``labels_file`` (relative to ``root``) is a CSV, TSV, whitespace-separated
    text file or spreadsheet (with openpyxl).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        labels_file: str = "labels.csv",
        class_names: Sequence[str] = (),
        images_dir: str | None = "images",
        split_dirs: Mapping[str, str] | None = None,
        test_fraction: float = 0.2,
        display_name: str = "image folder dataset",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if not class_names:
            raise ValueError(f"{display_name}: class_names must list the label columns in order")
        if split_dirs is not None and set(split_dirs) != {"train", "test"}:
            raise ValueError(f"split_dirs must name exactly the train and test folders, got {dict(split_dirs)}")
        if split_dirs is None and not images_dir:
            raise ValueError(f"{display_name}: set images_dir (one folder) or split_dirs (train and test folders)")
        self._class_names = tuple(str(c) for c in class_names)
        self.labels_file = labels_file
        self.images_dir = images_dir
        self.split_dirs = dict(split_dirs) if split_dirs is not None else None
        self.test_fraction = float(test_fraction)
        self.display_name = display_name

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def index_splits(self, root: Path) -> dict[str, dict[str, Path]]:
        """Images by stem per official split (``all`` when the collection has none)."""
        if self.split_dirs is None:
            return {"all": index_images(root / str(self.images_dir))}
        by_split = {split: index_images(root / folder) for split, folder in self.split_dirs.items()}
        both = sorted(set(by_split["train"]) & set(by_split["test"]))
        if both:
            raise DataFormatError(
                f"{len(both)} image(s) are in both {root / self.split_dirs['train']} and "
                f"{root / self.split_dirs['test']} (first: {both[:3]})"
            )
        return by_split

    def read_sources(self, root: Path) -> tuple[SplitSource, SplitSource]:
        table = read_label_table(root / self.labels_file, self._class_names)
        row_of = {sid: r for r, sid in enumerate(table.ids)}
        by_split = self.index_splits(root)
        bad: list[tuple[str, str]] = []
        matched: dict[str, list[tuple[str, Path]]] = {}
        for split, images in by_split.items():
            matched[split] = []
            for stem, path in images.items():
                if stem in row_of:
                    matched[split].append((stem, path))
                else:
                    bad.append((path.relative_to(root).as_posix(), f"image without a row in {self.labels_file}"))
        imaged = {stem for images in by_split.values() for stem in images}
        for sid, line in zip(table.ids, table.lines, strict=True):
            if sid not in imaged:
                bad.append((sid, f"row of {self.labels_file} (line {line}) without an image"))

        def source(items: Sequence[tuple[str, Path]]) -> SplitSource:
            rows = [row_of[stem] for stem, _ in items]
            return SplitSource(
                tuple(p for _, p in items), table.matrix[rows].reshape(len(rows), len(self._class_names)),
                tuple(s for s, _ in items),
            )  # fmt: skip

        if self.split_dirs is None:
            everything = source(matched["all"])
            pool_rows, test_rows = seeded_split(len(everything), self.test_fraction, self.split_seed)
            pool, test = everything.subset(pool_rows), everything.subset(test_rows)
        else:
            pool, test = source(matched["train"]), source(matched["test"])
        self.report_bad(bad, f"{self.display_name} under {root}")
        return pool, test


class AIDDataModule(LabelTableDataModule):
    """AID-multilabel: ``images_tr/<Scene>/<scene>_<n>.jpg``, ``images_test/...`` and the label CSV.

    ``labels_file`` is the original ``multilabel.csv`` (header ``IMAGE\\LABEL``, 17 columns) or the
    corrected ``multilabel_correct_final.csv`` of the same shape. Ids are image stems, which is
    what ``single_positive_labels_manual.csv`` names (``labels=manual``). AID has no land-cover
    maps, so ``labels=dominant`` is refused.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        labels_file: str = "multilabel.csv",
        train_dir: str = "images_tr",
        test_dir: str = "images_test",
        display_name: str = "AID-multilabel",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root, labels_file=labels_file, class_names=AID_CLASSES, images_dir=None,
            split_dirs={"train": train_dir, "test": test_dir}, display_name=display_name, **kwargs,
        )  # fmt: skip
