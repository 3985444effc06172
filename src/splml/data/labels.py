"""Single-positive label simulation: the ``labels=`` config group.

A *label source* turns the full training labels of a split into the observed label matrix the
loss sees (values 1 = annotated positive, 0 = unknown, -1 = annotated negative). Validation and
test always keep their full labels; only the training split is touched.

Every source is deterministic and its output is saved next to the run
(``observed_train_labels.npy`` and a readable CSV), so a run's labels can always be recovered.
"""

from __future__ import annotations

import csv
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Reads the reference map of sample i; provided by datasets that have maps (reBEN).
MapReader = Callable[[int], np.ndarray]


class LabelSource(ABC):
    """Produces the observed training labels from the full ones."""

    #: Short name recorded in results.json and logger tags.
    name: str = "base"

    @abstractmethod
    def observe(
        self,
        targets: np.ndarray,
        *,
        ids: Sequence[str],
        class_names: Sequence[str],
        class_counts: Callable[[int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Return an N x L float32 matrix of observed labels.

        ``ids`` name the samples (patch ids, image stems) for errors and for file-based sources;
        ``class_counts(i)`` gives per-class pixel counts of sample ``i`` from its reference map,
        when the dataset has maps.
        """


def _check_targets(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"full labels must be a 2-D N x L matrix, got shape {targets.shape}")
    empty = np.flatnonzero(targets.sum(1) == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} training sample(s) have no positive label (first: row {int(empty[0])}); "
            "a single positive cannot be drawn for them"
        )
    return targets


class FullLabels(LabelSource):
    """Oracle setting: every true label is observed (and every other one is a known negative)."""

    name = "full"

    def observe(self, targets, *, ids, class_names, class_counts=None):
        targets = np.asarray(targets)
        return np.where(targets > 0, 1.0, -1.0).astype(np.float32)


class RandomSinglePositive(LabelSource):
    """One positive per sample drawn uniformly from its true labels, reproducible from ``seed``.

    Follows the SPML literature: one generator seeded once, then per sample the positive indices
    are shuffled and the first one kept, in dataset order. ``file`` loads a label file written
    beforehand (``data_prep/make_single_positive_labels.py``) instead of drawing, so every run
    and every tool provably uses the same single positives; ``seed`` is then unused.
    """

    name = "random"

    def __init__(self, seed: int = 1200, file: str | Path | None = None) -> None:
        self.seed = int(seed)
        self.file = Path(file) if file else None

    def observe(self, targets, *, ids, class_names, class_counts=None):
        if self.file is not None:
            return load_single_positive_file(self.file, targets, ids=ids, class_names=class_names)
        targets = _check_targets(targets)
        rng = np.random.default_rng(self.seed)
        observed = np.zeros(targets.shape, dtype=np.float32)
        for i, row in enumerate(targets):
            positives = np.flatnonzero(row)
            rng.shuffle(positives)
            observed[i, positives[0]] = 1.0
        return observed


class DominantSinglePositive(LabelSource):
    """The class covering the most pixels of the reference map, among the sample's own labels.

    Unlabeled CLC codes are ignored; ties go to the lowest class index so the choice is stable.
    ``file`` loads the labels precomputed by ``data_prep/make_single_positive_labels.py``, which
    saves reading every reference map at the start of each run.
    """

    name = "dominant"

    def __init__(self, file: str | Path | None = None) -> None:
        self.file = Path(file) if file else None

    def observe(self, targets, *, ids, class_names, class_counts=None):
        if self.file is not None:
            return load_single_positive_file(self.file, targets, ids=ids, class_names=class_names)
        targets = _check_targets(targets)
        if class_counts is None:
            raise ValueError(
                "labels=dominant needs reference maps, and this dataset has none; use labels=random or labels=manual"
            )
        observed = np.zeros(targets.shape, dtype=np.float32)
        for i, row in enumerate(targets):
            counts = np.where(row > 0, class_counts(i), -1)
            if counts.max() <= 0:
                raise ValueError(
                    f"sample {ids[i]}: its reference map has no pixel of any of its labels "
                    f"{[class_names[c] for c in np.flatnonzero(row)]}"
                )
            observed[i, int(np.argmax(counts))] = 1.0  # argmax returns the first (lowest) index on ties
        return observed


#: Columns of the annotation file written by ``python -m splml.annotate`` (its header row, in this
#: order). A row with an empty ``class_name`` records a skipped image; later rows for an image
#: replace earlier ones (an answer changed after going back).
ANNOTATION_COLUMNS: tuple[str, ...] = ("image_id", "class_name", "annotator", "timestamp", "seconds")

#: What ``labels=manual`` does with a training image the file leaves without a class.
MISSING_POLICIES: tuple[str, ...] = ("error", "random")


class ManualSinglePositive(LabelSource):
    """Labels from a file: one class per training sample, chosen by a person.

    Two formats are read:

    * ``<id>,<class name or index>`` rows, optionally under a header (detected when its second
      field is neither a class name nor an index); an id appearing twice is an error;
    * the annotation file of ``python -m splml.annotate``: a header naming at least ``image_id``
      and ``class_name`` (extra columns such as annotator, timestamp and seconds are kept in the
      file, not used here). It is a log: the last row of an image wins, and an empty class
      marks an image the annotator skipped.

    Every training sample needs a class. Skipped and missing samples are an error listing
    them, unless ``missing="random"``, which gives each of them one of its true labels drawn
    as ``labels=random`` with ``seed`` would (and logs how many). Unknown ids and unknown
    classes are errors naming the file and line.
    """

    name = "manual"

    def __init__(self, file: str | Path, missing: str = "error", seed: int = 1200) -> None:
        if not file:
            raise ValueError("labels=manual needs labels.file=<path to a CSV of id,class>")
        if missing not in MISSING_POLICIES:
            raise ValueError(f"labels.missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.file = Path(file)
        self.missing = missing
        self.seed = int(seed)

    def observe(self, targets, *, ids, class_names, class_counts=None):
        targets = np.asarray(targets)
        if not self.file.is_file():
            raise FileNotFoundError(f"manual label file not found: {self.file}")
        with self.file.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        index_of_id = {sid: i for i, sid in enumerate(ids)}
        index_of_class = {name: c for c, name in enumerate(class_names)}
        header = [cell.strip() for cell in rows[0]] if rows else []
        if "image_id" in header and "class_name" in header:
            chosen = _read_annotation_rows(self.file, rows, index_of_id, index_of_class)
        else:
            chosen = _read_pair_rows(self.file, rows, index_of_id, index_of_class)
        observed = np.zeros(targets.shape, dtype=np.float32)
        for sid, cls_index in chosen.items():
            if cls_index is not None:
                observed[index_of_id[sid], cls_index] = 1.0
        skipped = [sid for sid in ids if sid in chosen and chosen[sid] is None]
        missing = [sid for sid in ids if sid not in chosen]
        if not skipped and not missing:
            return observed
        parts = []
        if missing:
            parts.append(f"{len(missing)} training sample(s) have no manual label (first: {missing[:5]})")
        if skipped:
            parts.append(f"{len(skipped)} were skipped by the annotator (first: {skipped[:5]})")
        if self.missing == "error":
            raise ValueError(
                f"{self.file}: {'; '.join(parts)}. Label them (python -m splml.annotate resumes at the first "
                "unanswered image and shows skipped ones again at the end), or set labels.missing=random to give "
                "each of them one of its true labels at random"
            )
        drawn = RandomSinglePositive(self.seed).observe(targets, ids=ids, class_names=class_names)
        for sid in missing + skipped:
            observed[index_of_id[sid]] = drawn[index_of_id[sid]]
        log.warning(
            "%s: %s; labels.missing=random drew their positive from the true labels (seed %d)",
            self.file, "; ".join(parts), self.seed,
        )  # fmt: skip
        return observed


def _read_pair_rows(
    file: Path, rows: list[list[str]], index_of_id: dict[str, int], index_of_class: dict[str, int]
) -> dict[str, int]:
    """``<id>,<class>`` rows: every id at most once."""
    chosen: dict[str, int] = {}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise ValueError(f"{file}, line {line}: expected 2 fields (id, class), got {len(row)}: {row}")
        sid, cls = row[0].strip(), row[1].strip()
        cls_index = _parse_class(cls, index_of_class)
        if cls_index is None:
            if line == 1 and sid not in index_of_id:
                continue  # header row
            raise ValueError(
                f"{file}, line {line}: {cls!r} is neither a class name nor an index in 0..{len(index_of_class) - 1}"
            )
        if sid not in index_of_id:
            raise ValueError(f"{file}, line {line}: id {sid!r} is not in the training split")
        if sid in seen:
            raise ValueError(f"{file}, line {line}: id {sid!r} already labelled on line {seen[sid]}")
        seen[sid] = line
        chosen[sid] = cls_index
    return chosen


def _read_annotation_rows(
    file: Path, rows: list[list[str]], index_of_id: dict[str, int], index_of_class: dict[str, int]
) -> dict[str, int | None]:
    """Rows of an annotation file (header first): the last row per id wins; an empty class is a skip."""
    header = [cell.strip() for cell in rows[0]]
    id_col, class_col = header.index("image_id"), header.index("class_name")
    chosen: dict[str, int | None] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{file}, line {line}: expected {len(header)} fields ({','.join(header)}), got {len(row)}: {row} "
                "(a line cut short by a crash is repaired by starting python -m splml.annotate on the file)"
            )
        sid, cls = row[id_col].strip(), row[class_col].strip()
        if sid not in index_of_id:
            raise ValueError(f"{file}, line {line}: id {sid!r} is not in the training split")
        if not cls:
            chosen[sid] = None
            continue
        cls_index = _parse_class(cls, index_of_class)
        if cls_index is None:
            raise ValueError(
                f"{file}, line {line}: {cls!r} is neither a class name nor an index in 0..{len(index_of_class) - 1}"
            )
        chosen[sid] = cls_index
    return chosen


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
    with csv_file.open(newline="", encoding="utf-8") as fh:
        rows = [row[0] for row in csv.reader(fh) if row][1:]  # first row is the header
    if len(rows) != len(ids):
        raise ValueError(f"{csv_file}: {len(rows)} ids, but the training split has {len(ids)} samples")
    for row, (found, expected) in enumerate(zip(rows, ids, strict=True)):
        if found != expected:
            raise ValueError(
                f"{csv_file}, row {row}: id {found!r} where the training split has {expected!r}; "
                "the label file was made for another sample order"
            )


def _parse_class(text: str, index_of_class: dict[str, int]) -> int | None:
    if text in index_of_class:
        return index_of_class[text]
    if text.lstrip("-").isdigit():
        value = int(text)
        if 0 <= value < len(index_of_class):
            return value
    return None


def save_observed(path_stem: Path, observed: np.ndarray, ids: Sequence[str], class_names: Sequence[str]) -> None:
    """Write observed labels as ``<stem>.npy`` and a human-readable ``<stem>.csv``."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    np.save(path_stem.with_suffix(".npy"), observed)
    with path_stem.with_suffix(".csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "observed_positives"])
        for sid, row in zip(ids, observed, strict=True):
            writer.writerow([sid, ";".join(class_names[c] for c in np.flatnonzero(row > 0))])
