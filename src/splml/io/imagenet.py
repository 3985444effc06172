"""ILSVRC2012 (ImageNet-1K) label files and the ReaL relabelling of its validation set: the readers.

Class order: the synset ids (WNIDs) sorted as strings, ``n01440764`` = 0, which is the order of
torchvision's ``ImageFolder`` on ``train/<wnid>/``, of timm's and torchvision's pretrained
classifiers and of ``real.json``. It is *not* the order of the devkit's ``ILSVRC2012_ID``
(1..1000, from ``meta.mat``; ID 1 is ``n02119789``), which only the devkit's ground-truth file uses:
:func:`read_devkit_ground_truth` turns those IDs into WNIDs, and the datamodule maps WNIDs to the
sorted order.

Files (all facts of the public releases):

* devkit ``data/meta.mat``: a MATLAB struct array ``synsets`` with fields ``ILSVRC2012_ID``,
  ``WNID``, ``words``, ``gloss``, ``num_children``, ...; the 1000 classes are the leaves
  (``num_children == 0``), the other 860 entries are inner WordNet nodes;
* devkit ``data/ILSVRC2012_validation_ground_truth.txt``: line ``i`` (1-based) holds the
  ``ILSVRC2012_ID`` of ``ILSVRC2012_val_{i:08d}.JPEG``;
* ``LOC_synset_mapping.txt``: ``<wnid> <words>`` per line (e.g. ``n01440764 tench, Tinca tinca``);
* ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, then ``ILSVRC2012_val_00008726,
  n02119789 255 142 454 329 ...`` (boxes as ``wnid x_min y_min x_max y_max``; the image's class is
  the WNID of its boxes);
* ``real.json`` (Beyer et al. 2020, "Are we done with ImageNet?"): a JSON list with one list per
  validation image, entry ``i`` for ``ILSVRC2012_val_{i+1:08d}.JPEG``, holding class indices in
  the sorted-WNID order; an empty list marks an image the relabelling left out (3,163 of 50,000).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from splml.io.errors import DataFormatError

#: Names of the files in the releases.
META_FILE: Final[str] = "meta.mat"
GROUND_TRUTH_FILE: Final[str] = "ILSVRC2012_validation_ground_truth.txt"
SYNSET_MAPPING_FILE: Final[str] = "LOC_synset_mapping.txt"
LOC_VAL_SOLUTION_FILE: Final[str] = "LOC_val_solution.csv"
REAL_FILE: Final[str] = "real.json"

_WNID = re.compile(r"n\d{8}")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def val_image_stem(number: int) -> str:
    """The file stem of validation image ``number`` (1-based): ``ILSVRC2012_val_00000001``."""
    return f"ILSVRC2012_val_{int(number):08d}"


def val_image_number(name: str) -> int | None:
    """The 1-based number of a validation file or stem (``ILSVRC2012_val_00000042.JPEG`` -> 42); None otherwise."""
    match = _VAL_NAME.fullmatch(Path(name).stem) if name else None
    return int(match.group(1)) if match else None


def is_wnid(name: str) -> bool:
    """Whether ``name`` has the form of a WordNet synset id (``n`` + 8 digits)."""
    return bool(_WNID.fullmatch(name))


def read_devkit_meta(path: Path) -> dict[int, str]:
    """``ILSVRC2012_ID -> WNID`` of the leaf synsets (the classes) of the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"devkit file not found: {path}")
    try:
        synsets = loadmat(path, squeeze_me=True)["synsets"]
    except KeyError:
        raise DataFormatError(
            f"{path}: no 'synsets' struct array (is this the ILSVRC2012 devkit's meta.mat?)"
        ) from None
    except Exception as exc:  # scipy raises several types for a file that is not a MATLAB file
        raise DataFormatError(f"{path}: cannot read it as a MATLAB file ({type(exc).__name__}: {exc})") from exc
    synsets = np.atleast_1d(synsets)
    fields = synsets.dtype.names or ()
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "num_children") if f not in fields]
    if missing:
        raise DataFormatError(f"{path}: the synsets have no field(s) {missing} (fields: {list(fields)})")
    classes: dict[int, str] = {}
    for row, entry in enumerate(synsets):
        if int(entry["num_children"]) != 0:
            continue  # an inner node of the WordNet hierarchy, not a class
        ilsvrc_id, wnid = int(entry["ILSVRC2012_ID"]), str(entry["WNID"])
        if not is_wnid(wnid):
            raise DataFormatError(f"{path}: synset {row} has WNID {wnid!r}, not of the form n + 8 digits")
        if ilsvrc_id in classes:
            raise DataFormatError(f"{path}: ILSVRC2012_ID {ilsvrc_id} is used by {classes[ilsvrc_id]} and {wnid}")
        classes[ilsvrc_id] = wnid
    if not classes:
        raise DataFormatError(f"{path}: no leaf synset (num_children == 0)")
    return classes


def read_devkit_ground_truth(path: Path, id_to_wnid: dict[int, str]) -> list[str]:
    """The WNID of every validation image, in image order, from the devkit's ground-truth file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"devkit file not found: {path}")
    wnids = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in id_to_wnid:
            raise DataFormatError(
                f"{path}, line {line_no} ({val_image_stem(line_no)}): {text!r} is not an ILSVRC2012_ID of a class "
                f"in meta.mat (1..{max(id_to_wnid)})"
            )
        wnids.append(id_to_wnid[int(text)])
    return wnids


def read_loc_val_solution(path: Path) -> dict[int, str]:
    """``image number -> WNID`` from ``LOC_val_solution.csv`` (the WNID of the image's boxes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    out: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataFormatError(f"{path}: expected the header 'ImageId,PredictionString', got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            number = val_image_number(row[0].strip())
            tokens = row[1].split() if len(row) > 1 else []
            wnids = {t for t in tokens if is_wnid(t)}
            if number is None or len(wnids) != 1:
                raise DataFormatError(
                    f"{path}, line {line_no}: expected 'ILSVRC2012_val_<8 digits>,<wnid> <box> ...' with the "
                    f"boxes of one class, got {row[:2]}"
                )
            if number in out:
                raise DataFormatError(f"{path}, line {line_no}: {row[0]} is listed twice")
            out[number] = wnids.pop()
    return out


def read_synset_mapping(path: Path) -> dict[str, str]:
    """``WNID -> words`` from ``LOC_synset_mapping.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    out: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not is_wnid(wnid) or wnid in out:
            raise DataFormatError(f"{path}, line {line_no}: expected a new '<wnid> <words>', got {line!r}")
        out[wnid] = words.strip()
    return out


def read_real_labels(path: Path, num_classes: int) -> list[tuple[int, ...]]:
    """The ReaL label sets of ``real.json``: entry ``i`` for validation image ``i + 1``.

    Every entry must be a list of distinct class indices in ``0 .. num_classes - 1``; an empty
    list is kept (the image was left out of the relabelling). Errors name the entry and its image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ReaL labels not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise DataFormatError(f"{path}: expected a JSON list of lists of class indices, got {type(entries).__name__}")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}, entry {i} ({val_image_stem(i + 1)})"
        if not isinstance(entry, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in entry):
            raise DataFormatError(f"{where}: expected a list of class indices, got {entry!r}")
        bad = [c for c in entry if not 0 <= c < num_classes]
        if bad:
            raise DataFormatError(f"{where}: class indices {bad} outside 0..{num_classes - 1}")
        if len(set(entry)) != len(entry):
            raise DataFormatError(f"{where}: a class is listed twice in {entry}")
        out.append(tuple(sorted(entry)))
    return out


def label_sets_to_matrix(label_sets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """N x ``num_classes`` uint8 0/1 matrix of per-image class-index lists."""
    matrix = np.zeros((len(label_sets), num_classes), dtype=np.uint8)
    for row, classes in enumerate(label_sets):
        matrix[row, list(classes)] = 1
    return matrix
