"""The datamodule of the SPML literature's formatted files (``dataset=coco|voc|nuswide|cub``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.data.datamodules.images import ImageDataModule
from splml.data.datasets.images import SplitSource
from splml.data.datasets.spml_files import (
    CLASS_NAMES_FILE,
    DISPLAY_NAMES,
    KNOWN_CLASSES,
    load_label_matrix,
    load_string_array,
)
from splml.io.errors import DataFormatError


class SPMLFilesDataModule(ImageDataModule):
    """A dataset in the SPML literature's formatted files (``dataset=coco|voc|nuswide|cub``).

    Images are read from ``root / images_dir / <relative path>``; ids are the relative paths.
    Class names: ``class_names`` when given, else ``class_names.txt`` in ``root``, else the
    built-in list (VOC, COCO), else the class indices. With ``check_files`` every listed image
    must exist at setup (missing ones: an error naming them, or skipped with ``skip_bad``).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        name: str = "coco",
        num_classes: int = 80,
        images_dir: str = ".",
        class_names: Sequence[str] | None = None,
        check_files: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.dataset_name = name
        self.display_name = DISPLAY_NAMES.get(name, name)
        self.images_dir = images_dir
        self.check_files = check_files
        self._num_classes = int(num_classes)
        self._class_names = self._checked_names(class_names, "class_names") if class_names else None

    def _checked_names(self, names: Sequence[str], where: str) -> tuple[str, ...]:
        names = tuple(str(n) for n in names)
        if len(names) != self._num_classes:
            raise DataFormatError(
                f"{where}: {len(names)} class names for {self._num_classes} classes ({self.dataset_name})"
            )
        return names

    @property
    def class_names(self) -> tuple[str, ...]:
        if self._class_names is None:
            names_file = self.root / CLASS_NAMES_FILE if self.root is not None else None
            if names_file is not None and names_file.is_file():
                lines = [x.strip() for x in names_file.read_text(encoding="utf-8").splitlines() if x.strip()]
                self._class_names = self._checked_names(lines, str(names_file))
            elif self.dataset_name in KNOWN_CLASSES:
                self._class_names = self._checked_names(
                    KNOWN_CLASSES[self.dataset_name], f"built-in {self.dataset_name} classes"
                )
            else:
                return tuple(str(i) for i in range(self._num_classes))
        return self._class_names

    def read_phase(self, root: Path, phase: str) -> SplitSource:
        """One official phase (``train`` or ``val``) of the formatted files."""
        images_path = root / f"formatted_{phase}_images.npy"
        labels_path = root / f"formatted_{phase}_labels.npy"
        rel = load_string_array(images_path)
        labels = load_label_matrix(labels_path, self._num_classes)
        if len(rel) != len(labels):
            raise DataFormatError(f"{images_path} lists {len(rel)} images but {labels_path} has {len(labels)} rows")
        folder = root / self.images_dir
        paths = tuple(folder / p for p in rel)
        source = SplitSource(paths, labels.astype(np.uint8), tuple(rel.tolist()))
        if not self.check_files:
            return source
        present = np.array([p.is_file() for p in paths], dtype=bool)
        bad = [(rel[r], f"image not found under {folder}") for r in np.flatnonzero(~present)]
        self.report_bad(bad, f"{self.display_name} {images_path.name} (images_dir={self.images_dir!r})")
        return source.subset(np.flatnonzero(present)) if bad else source

    def read_sources(self, root: Path) -> tuple[SplitSource, SplitSource]:
        return self.read_phase(root, "train"), self.read_phase(root, "val")
