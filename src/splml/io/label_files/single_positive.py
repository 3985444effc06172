"""Single-positive label files: the observed labels a run trained on, and label files made beforehand.

One writer, :func:`save_observed`, writes ``<stem>.npy`` (N x L) and a readable ``<stem>.csv``
(``id,observed_positives``): every run's ``observed_train_labels`` and the
``train_<mode>_single_labels`` of ``data_prep/make_single_positive_labels.py``. One reader,
:func:`load_single_positive_file`, loads such a file back (``labels.file=``) and checks it
against the split it is used for, the ids of the CSV beside it included.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

#: The observed labels every run saves next to it: ``observed_train_labels.npy`` / ``.csv``.
OBSERVED_LABELS_STEM: Final[str] = "observed_train_labels"


def load_single_positive_file(
    file: Path, targets: np.ndarray, *, ids: Sequence[str], class_names: Sequence[str]
) -> np.ndarray:
    """Load an N x L one-hot ``.npy`` of single positives and check it against the split.

    A label file is only valid for the exact split it was made from, so everything that can be
    checked is: the shape (N samples x L classes), values 0/1 with exactly one positive per
    row, the positive among the row's true labels and, when the readable CSV written next to
    it exists, the sample ids in order. Errors name the file and the first bad row.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(
            f"single-positive label file not found: {file} (write it with data_prep/make_single_positive_labels.py)"
        )
    try:
        observed = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{file}: not a readable .npy array ({exc})") from exc
    targets = np.asarray(targets)
    if observed.shape != targets.shape:
        raise ValueError(
            f"{file}: shape {observed.shape}, but the training split has shape {targets.shape} "
            f"(samples x classes); it was made for another split (metadata file, include_snow_cloud, max_samples?)"
        )
    if not np.issubdtype(observed.dtype, np.number) and observed.dtype != np.bool_:
        raise ValueError(f"{file}: dtype {observed.dtype} is not numeric")
    not_binary = ~np.isin(observed, (0, 1))
    positives = (observed == 1).sum(1)
    outside = ((observed == 1) & (targets == 0)).any(1)
    bad = np.flatnonzero(not_binary.any(1) | (positives != 1) | outside)
    if bad.size:
        row = int(bad[0])
        where = f"{file}, row {row} (id {ids[row]})"
        if not_binary[row].any():
            raise ValueError(f"{where}: values must be 0 or 1, got {observed[row][not_binary[row]][:5].tolist()}")
        if positives[row] != 1:
            raise ValueError(
                f"{where}: expected exactly one positive, got {int(positives[row])} "
                f"{[class_names[c] for c in np.flatnonzero(observed[row] == 1)]}"
            )
        if outside[row]:
            cls = int(np.flatnonzero(observed[row] == 1)[0])
            raise ValueError(
                f"{where}: the positive {class_names[cls]!r} is not among its true labels "
                f"{[class_names[c] for c in np.flatnonzero(targets[row])]}"
            )
    _check_file_ids(file.with_suffix(".csv"), ids)
    return observed.astype(np.float32)


def _check_file_ids(csv_file: Path, ids: Sequence[str]) -> None:
    """Compare the ids of the CSV written next to a label file with the split's, in order."""
    if not csv_file.is_file():
        return
    with csv_file.open(newline="", encoding="utf-8-sig") as fh:
        rows = [row[0] for row in csv.reader(fh) if row][1:]  # first row is the header
    if len(rows) != len(ids):
        raise ValueError(f"{csv_file}: {len(rows)} ids, but the training split has {len(ids)} samples")
    for row, (found, expected) in enumerate(zip(rows, ids, strict=True)):
        if found != expected:
            raise ValueError(
                f"{csv_file}, row {row}: id {found!r} where the training split has {expected!r}; "
                "the label file was made for another sample order"
            )


def save_observed(path_stem: Path, observed: np.ndarray, ids: Sequence[str], class_names: Sequence[str]) -> None:
    """Write observed labels as ``<stem>.npy`` and a human-readable ``<stem>.csv``."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    np.save(path_stem.with_suffix(".npy"), observed)
    with path_stem.with_suffix(".csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "observed_positives"])
        for sid, row in zip(ids, observed, strict=True):
            writer.writerow([sid, ";".join(class_names[c] for c in np.flatnonzero(row > 0))])
