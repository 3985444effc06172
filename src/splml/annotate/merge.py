"""Merge the annotation files of several annotators into one, and report how much they agree.

    python -m splml.annotate.merge labels/ben_1.csv labels/ben_2.csv labels/ben_3.csv --out labels/ben_manual.csv

Each file is read by the one reader of the format (:func:`splml.io.label_files.read_annotation_file`)
and brought to its images' states (undos applied). Shard files (``shard=i/n``) must come from
the same dataset and the same split into shards (their ``shard`` rows say so); a shard missing
from the list is reported. Per image, the merged file holds one row:

* a judgement (a class, or "none of these") given in one file: that row;
* judgements in several files (the overlap every shard shares): the class they agree on, or
  the majority; with no majority the ``--disagreement`` policy decides: ``skip`` (default)
  writes a skip row whose note lists the answers, so that ``labels=manual`` reports the image
  and ``python -m splml.annotate`` on the merged file (without ``shard``) shows it again to be
  settled; ``first`` keeps the judgement of the first file given;
* no judgement but a flag: the flag (with its note), else the skip.

Agreement: Cohen's kappa (torchmetrics) between every two files on the images both judged,
"none of these" counting as one more category; skips and flags are left out. The merged file
starts with a ``merged`` row recording the files, the kappa and the disagreements, and is
written by the format's one writer with one ``fsync``; an existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splml.io.label_files import (
    AnnotationFileBusy,
    AnnotationLog,
    Answer,
    LabelFileError,
    RowKind,
    read_annotation_file,
)
from splml.io.label_files.annotations import utc_timestamp

log = logging.getLogger(__name__)
#: The category "none of these" in the agreement (no class of a nomenclature may be named so).
NONE_CATEGORY = "\0none of these"


@dataclass
class PairAgreement:
    """Cohen's kappa of two files on the images both judged (nan when it is undefined)."""

    first: Path
    second: Path
    images: int
    agreed: int
    kappa: float


@dataclass
class MergeReport:
    files: list[Path]
    rows: list[Answer]
    pairs: list[PairAgreement] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    majority: int = 0
    total: int | None = None
    missing_shards: list[str] = field(default_factory=list)

    @property
    def kappa(self) -> float | None:
        """The mean kappa over the pairs with overlap, weighted by their images (None without overlap)."""
        usable = [p for p in self.pairs if p.images and p.kappa == p.kappa]
        if not usable:
            return None
        return sum(p.kappa * p.images for p in usable) / sum(p.images for p in usable)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two annotators' categories for the same images (nan when undefined)."""
    import torch
    from torchmetrics.functional.classification import multiclass_cohen_kappa

    categories = {c: k for k, c in enumerate(sorted(set(first) | set(second)))}
    if len(categories) < 2:  # one category only: chance agreement is 1, kappa is 0 / 0
        return float("nan")
    a = torch.tensor([categories[c] for c in first])
    b = torch.tensor([categories[c] for c in second])
    return float(multiclass_cohen_kappa(b, a, num_classes=len(categories)))


def _judgement(row: Answer) -> str | None:
    if row.has_class:
        return row.class_name
    return NONE_CATEGORY if row.kind == RowKind.NONE else None


def merge_files(paths: Sequence[str | Path], disagreement: str = "skip") -> MergeReport:
    """The merged rows and the agreement of the annotation files ``paths`` (see the module docstring)."""
    if disagreement not in ("skip", "first"):
        raise ValueError(f"disagreement must be 'skip' or 'first', got {disagreement!r}")
    paths = [Path(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise ValueError("a file is given twice")
    found = [read_annotation_file(p, ids=None, class_names=None) for p in paths]
    report = MergeReport(paths, [])
    shards = [(p, a.shard) for p, a in zip(paths, found, strict=True)]
    with_shard = [(p, s) for p, s in shards if s is not None]
    if with_shard:
        if len(with_shard) != len(shards):
            raise ValueError(f"{[str(p) for p, s in shards if s is None]} have no shard row, the others do")
        first_path, first = with_shard[0]
        for path, shard in with_shard[1:]:
            same = (shard.count, shard.overlap, shard.seed, shard.total, shard.dataset)
            if same != (first.count, first.overlap, first.seed, first.total, first.dataset):
                raise ValueError(
                    f"{path} (shard {shard.note()}) and {first_path} (shard {first.note()}) do not split the same "
                    "dataset the same way"
                )
        labels = Counter(s.index for _, s in with_shard)
        repeated = [f"{i}/{first.count}" for i, n in labels.items() if n > 1]
        if repeated:
            raise ValueError(f"shard(s) {repeated} given more than once")
        report.missing_shards = [f"{i}/{first.count}" for i in range(1, first.count + 1) if i not in labels]
        report.total = first.total
    states = [a.decisions() for a in found]
    order = list(dict.fromkeys(image_id for state in states for image_id in state))
    for image_id in order:
        rows = [state[image_id] for state in states if image_id in state]
        report.rows.append(_merge_image(image_id, rows, disagreement, report))
    for (i, a), (j, b) in itertools.combinations(enumerate(states), 2):
        shared = [(ja, jb) for image_id, row in a.items() if image_id in b
                  and (ja := _judgement(row)) is not None and (jb := _judgement(b[image_id])) is not None]  # fmt: skip
        kappa = cohen_kappa([x for x, _ in shared], [y for _, y in shared]) if shared else float("nan")
        report.pairs.append(PairAgreement(paths[i], paths[j], len(shared), sum(x == y for x, y in shared), kappa))
    return report


def _merge_image(image_id: str, rows: list[Answer], disagreement: str, report: MergeReport) -> Answer:
    judged = [row for row in rows if _judgement(row) is not None]
    if not judged:
        flags = [row for row in rows if row.kind == RowKind.FLAG]
        return (flags or rows)[0]
    votes = Counter(_judgement(row) for row in judged)
    (best, count), *rest = votes.most_common()
    if len(votes) == 1:
        return _as_answer(judged[0])
    if not rest or count > rest[0][1]:
        report.majority += 1
        return _as_answer(next(row for row in judged if _judgement(row) == best))
    listing = "; ".join(f"{row.annotator or '?'}={_shown(_judgement(row))}" for row in judged)
    report.disagreements.append(f"{image_id} ({listing})")
    if disagreement == "first":
        return _as_answer(judged[0])
    return Answer(image_id, "", "merge", utc_timestamp(), 0.0, RowKind.SKIP, f"disagreement: {listing}")


def _as_answer(row: Answer) -> Answer:
    """A judgement as the merged file's only row of its image (a change has nothing left to change there)."""
    kind = RowKind.ANSWER if row.has_class else row.kind
    return Answer(row.image_id, row.class_name, row.annotator, row.timestamp, row.seconds, kind, row.note)


def _shown(category: str | None) -> str:
    return "none of these" if category == NONE_CATEGORY else str(category)


def write_merged(report: MergeReport, out: str | Path) -> Path:
    """Write the merged file (refusing an existing one) with its ``merged`` metadata row."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; the merge never overwrites a file: give --out a new name")
    ids = [row.image_id for row in report.rows]
    classes = sorted({row.class_name for row in report.rows if row.class_name})
    kappa = report.kappa
    note = (f"files={len(report.files)} images={len(report.rows)} majority={report.majority} "
            f"disagreements={len(report.disagreements)} kappa={'none' if kappa is None else f'{kappa:.4f}'}")  # fmt: skip
    with AnnotationLog(out, ids, classes) as merged:
        merged.extend([Answer("", "", "merge", utc_timestamp(), 0.0, RowKind.MERGED, note), *report.rows])
    return out


def describe(report: MergeReport, out: Path) -> str:
    """The report printed by the command."""
    lines = [f"merged {len(report.files)} file(s): {', '.join(str(p) for p in report.files)}"]
    judged = sum(1 for row in report.rows if row.has_class)
    total = f" of {report.total}" if report.total is not None else ""
    lines.append(f"{len(report.rows)}{total} images have a row; {judged} have a class")
    if report.missing_shards:
        lines.append(f"WARNING: shard(s) {', '.join(report.missing_shards)} are not among the files: their images "
                     "have no row")  # fmt: skip
    for pair in report.pairs:
        kappa = "undefined" if pair.kappa != pair.kappa else f"{pair.kappa:.3f}"
        lines.append(f"agreement {pair.first} / {pair.second}: {pair.agreed} of {pair.images} images judged by both "
                     f"agree, Cohen's kappa {kappa}")  # fmt: skip
    if report.kappa is not None and len(report.pairs) > 1:
        lines.append(f"mean Cohen's kappa (weighted by images): {report.kappa:.3f}")
    if report.majority:
        lines.append(f"{report.majority} image(s) settled by a majority")
    if report.disagreements:
        lines.append(f"{len(report.disagreements)} image(s) without a majority (first: "
                     f"{'; '.join(report.disagreements[:3])})")  # fmt: skip
    lines.append(f"written to {out}; train with labels=manual labels.file={out} and the dataset options of the "
                 "annotation (python -m splml.annotate on this file, without shard, shows the images left without "
                 "a class)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m splml.annotate.merge FILE... --out MERGED`` (also usable as a console script)."""
    parser = argparse.ArgumentParser(
        prog="python -m splml.annotate.merge",
        description="Merge the annotation files of several annotators (the shards of python -m splml.annotate "
        "shard=i/n) into one file for labels=manual, and report their agreement (Cohen's kappa) on the images "
        "they share.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="annotation files (every shard's)")
    parser.add_argument("--out", type=Path, required=True, help="the merged file to write (must not exist)")
    parser.add_argument("--disagreement", choices=("skip", "first"), default="skip",
                        help="images whose answers have no majority: skip (left for a decision, reported by "
                             "labels=manual) or first (the first file's answer); default: skip")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        report = merge_files(args.files, args.disagreement)
        out = write_merged(report, args.out)
    except (LabelFileError, AnnotationFileBusy, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"splml.annotate.merge: error: {exc}", file=sys.stderr)
        return 2
    print(describe(report, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
