"""Single-positive label simulation: the ``labels=`` config group.

A *label source* turns the full training labels of a split into the observed label matrix the
loss sees (values 1 = annotated positive, 0 = unknown, -1 = annotated negative). Validation and
test always keep their full labels; only the training split is touched.

Every source is deterministic and its output is saved next to the run
(``observed_train_labels.npy`` and a readable CSV), so a run's labels can always be recovered.
The label files themselves are read by their one owner, :mod:`splml.io.label_files`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from splml.data.datasets.spml_files import load_label_matrix, load_string_array
from splml.io.errors import DataFormatError
from splml.io.label_files import RowKind, load_single_positive_file, read_annotation_file

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


class DatasetSinglePositive(LabelSource):
    """The dataset's own single label is the observed positive: no simulation (ImageNet's labels).

    For collections annotated with one class per training image; the other classes are unknown
    (0), as for every single-positive source. A training image with another number of labels is
    an error naming it (``labels=random`` draws one positive from several).
    """

    name = "observed"

    def observe(self, targets, *, ids, class_names, class_counts=None):
        targets = _check_targets(targets)
        counts = (targets > 0).sum(1)
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"labels=observed needs exactly one label per training image; {bad.size} image(s) have another "
                f"number (first: {ids[row]} with {int(counts[row])}); use labels=random to draw one of them"
            )
        return (targets > 0).astype(np.float32)


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


#: What ``labels=manual`` does with a training image the file leaves without a class.
MISSING_POLICIES: tuple[str, ...] = ("error", "random")


class ManualSinglePositive(LabelSource):
    """Labels from a file: one class per training sample, chosen by a person.

    The file is read by :func:`splml.io.label_files.read_annotation_file`, the reader the
    annotation tool uses too: ``<id>,<class name or index>`` rows (optionally under a header),
    or the annotation file of ``python -m splml.annotate``, a log whose rows are applied in
    order: an answer (or a changed answer) gives the image its class, an undo cancels the
    image's latest row, and the metadata rows (``shard``, ``merged``) describe the file.

    Every training sample needs a class. Samples the file leaves without one are reported, by
    kind: no row at all, skipped, marked "none of these" (no class of the nomenclature applies)
    and flagged (with the annotator's note). They are an error listing them, unless
    ``missing="random"``, which gives each of them one of its true labels drawn as
    ``labels=random`` with ``seed`` would, and logs how many of each kind. A shard's file (one
    annotator's part of the dataset) says so and names the merge command. Unknown ids and
    unknown classes are errors naming the file, line and column.
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
        annotations = read_annotation_file(self.file, ids=ids, class_names=class_names)
        decisions = annotations.decisions()
        index_of_id = {sid: i for i, sid in enumerate(ids)}
        index_of_class = {name: c for c, name in enumerate(class_names)}
        observed = np.zeros(targets.shape, dtype=np.float32)
        for sid, row in decisions.items():
            if row.has_class:
                observed[index_of_id[sid], index_of_class[row.class_name]] = 1.0
        unlabelled = _unlabelled(ids, decisions)
        if not any(unlabelled.values()):
            return observed
        parts = [_describe(kind, sids, decisions) for kind, sids in unlabelled.items() if sids]
        shard = annotations.shard
        if self.missing == "error":
            hint = (
                f" This file is shard {shard.label} ({shard.images} of the {shard.total} images): merge every "
                "shard's file with python -m splml.annotate.merge <shard files> --out <merged.csv> and train on the "
                "merged file."
                if shard is not None
                else ""
            )
            raise ValueError(
                f"{self.file}: {'; '.join(parts)}. Label them (python -m splml.annotate resumes at the first "
                "unanswered image, shows skipped ones again at the end, and Undo or Go to reopens any image), or set "
                f"labels.missing=random to give each of them one of its true labels at random.{hint}"
            )
        drawn = RandomSinglePositive(self.seed).observe(targets, ids=ids, class_names=class_names)
        for sids in unlabelled.values():
            for sid in sids:
                observed[index_of_id[sid]] = drawn[index_of_id[sid]]
        log.warning(
            "%s: %s; labels.missing=random drew their positive from the true labels (seed %d)",
            self.file, "; ".join(parts), self.seed,
        )  # fmt: skip
        return observed


def _unlabelled(ids: Sequence[str], decisions: dict) -> dict[str, list[str]]:
    """The training samples without a class, by why: no row, skipped, none of these, flagged."""
    groups: dict[str, list[str]] = {"missing": [], RowKind.SKIP: [], RowKind.NONE: [], RowKind.FLAG: []}
    for sid in ids:
        row = decisions.get(sid)
        if row is None:
            groups["missing"].append(sid)
        elif not row.has_class:
            groups[row.kind].append(sid)
    return groups


def _describe(kind: str, sids: list[str], decisions: dict) -> str:
    if kind == "missing":
        return f"{len(sids)} training sample(s) have no manual label (first: {sids[:5]})"
    if kind == RowKind.SKIP:
        return f"{len(sids)} were skipped by the annotator (first: {sids[:5]})"
    if kind == RowKind.NONE:
        return f"{len(sids)} were marked 'none of these' by the annotator (first: {sids[:5]})"
    flagged = [f"{sid} ({decisions[sid].note})" for sid in sids[:5]]
    return f"{len(sids)} were flagged by the annotator (first: {', '.join(flagged)})"


class ObservedLabelsFile(LabelSource):
    """Observed training labels read from an ``.npy`` file (N x L in {-1, 0, 1}).

    Meant for the literature's ``formatted_train_labels_obs.npy``: its rows follow
    ``formatted_train_images.npy``, which is read from beside it (or ``images_file``) to find
    the row of every training id, so the file stays correct when items were skipped. Without an
    images file the rows must match the ids one to one.
    """

    name = "observed_file"

    def __init__(self, file: str | Path, images_file: str | Path | None = None) -> None:
        if not file:
            raise ValueError("ObservedLabelsFile needs file=<path to an N x L .npy of -1/0/1>")
        self.file = Path(file)
        if images_file is None and self.file.name.endswith("_labels_obs.npy"):
            sibling = self.file.with_name(self.file.name.replace("_labels_obs.npy", "_images.npy"))
            images_file = sibling if sibling.is_file() else None
        self.images_file = Path(images_file) if images_file else None

    def observe(self, targets, *, ids, class_names, class_counts=None):
        targets = np.asarray(targets)
        observed = load_label_matrix(self.file, targets.shape[1], values=(-1.0, 0.0, 1.0)).astype(np.float32)
        if self.images_file is None:
            if len(observed) != len(ids):
                raise DataFormatError(
                    f"{self.file}: {len(observed)} rows for {len(ids)} training images (and no images file "
                    "to match them by path)"
                )
            return observed
        row_of = {str(p): r for r, p in enumerate(load_string_array(self.images_file))}
        if len(row_of) != len(observed):
            raise DataFormatError(
                f"{self.file} has {len(observed)} rows but {self.images_file} lists {len(row_of)} images"
            )
        missing = [sid for sid in ids if sid not in row_of]
        if missing:
            raise DataFormatError(
                f"{self.images_file}: {len(missing)} training image(s) not listed (first: {missing[:3]})"
            )
        return observed[[row_of[sid] for sid in ids]]
