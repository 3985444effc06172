"""The SPML literature's formatted files: COCO 2014, VOC 2012, NUS-WIDE, CUB-200-2011.

Per dataset folder: ``formatted_{train,val}_images.npy`` (image paths relative to an images
folder), ``formatted_{train,val}_labels.npy`` (N x L, 0/1) and optionally
``formatted_train_labels_obs.npy`` (N x L in {-1, 0, 1}). The convention of that literature
(Cole et al. 2021, followed by every later paper) is kept: the official train set is split
80/20 into train and a clean validation set with split seed 1200, and the official val set is
the test set. ``data_prep/format_spml.py`` writes these files from the official annotations
(plus ``class_names.txt``). This module reads the files; the datamodule is
:class:`splml.data.datamodules.spml_files.SPMLFilesDataModule`, and ``labels=observed_file``
(:class:`splml.data.labels.ObservedLabelsFile`) reads the observed labels with
:func:`load_label_matrix` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from splml.io.errors import DataFormatError

#: VOC 2012's 20 classes in the standard (alphabetical) order of its ImageSets files.
VOC_CLASSES: Final[tuple[str, ...]] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: COCO's 80 categories in the standard order (ascending category id, as in instances_*2014.json).
COCO_CLASSES: Final[tuple[str, ...]] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
#: Built-in class lists; NUS-WIDE and CUB take theirs from class_names.txt or use indices.
KNOWN_CLASSES: Final[dict[str, tuple[str, ...]]] = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}
DISPLAY_NAMES: Final[dict[str, str]] = {
    "coco": "COCO 2014", "voc": "VOC 2012", "nuswide": "NUS-WIDE", "cub": "CUB-200-2011",
}  # fmt: skip
#: Written by data_prep/format_spml.py next to the formatted files: one class name per line.
CLASS_NAMES_FILE: Final[str] = "class_names.txt"


def load_string_array(path: Path) -> np.ndarray:
    """A 1-D array of strings from an ``.npy`` file, without unpickling anything.

    Files saved from a list of Python strings hold a unicode array and load as such; an object
    array would need pickle, which this reader refuses (it can run code), with the fix named.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        values = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataFormatError(
            f"{path}: holds Python objects (pickled); re-save it as a string array, e.g. "
            "np.save(path, np.load(path, allow_pickle=True).astype(str))"
        ) from exc
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise DataFormatError(f"{path}: expected a 1-D array of paths, got {values.dtype} {values.shape}")
    return values.astype(str)


def load_label_matrix(path: Path, num_classes: int, values: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """An N x ``num_classes`` label matrix from ``.npy``, every entry in ``values``."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        matrix = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataFormatError(f"{path}: not a numeric label matrix (ragged rows or pickled objects: {exc})") from exc
    if matrix.dtype.kind not in "biuf":
        raise DataFormatError(f"{path}: label matrix has dtype {matrix.dtype}, expected numbers")
    if matrix.ndim != 2:
        raise DataFormatError(f"{path}: expected an N x {num_classes} label matrix, got shape {matrix.shape}")
    if matrix.shape[1] != num_classes:
        raise DataFormatError(
            f"{path}: rows have {matrix.shape[1]} labels, expected {num_classes} (dataset.num_classes)"
        )
    bad = ~np.isin(matrix, values)
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        raise DataFormatError(
            f"{path}: row {row}, column {col} holds {matrix[row, col]}, expected one of {list(values)}"
        )
    return matrix
