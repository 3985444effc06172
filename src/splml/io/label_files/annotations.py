"""The annotation file: its row types and the one reader used by ``labels=manual``, ``splml.annotate`` and the merge.

Two layouts are read, by :func:`read_annotations` only:

* the annotation file of ``python -m splml.annotate``: a header naming at least ``image_id``
  and ``class_name`` (any column order; extra columns are kept in the file and not used), then
  one row per event. The tool writes :data:`ANNOTATION_COLUMNS`; files of the earlier
  five-column layout (no ``kind``, ``note``) are read as answers and skips;
* ``<id>,<class>`` rows, optionally under a header (detected when its second field is neither
  a class nor an index and its first is no image of the list); an id appearing twice is an error.

The ``kind`` column says what a row records (:class:`RowKind`): a class (``answer``, or
``change`` when it replaces an earlier class), ``skip`` (left for later), ``none`` (none of the
classes applies), ``flag`` (set aside, with a ``note``), ``undo`` (cancels the image's latest
row still in force: the state before it returns) and the metadata rows ``shard`` / ``merged``
(no image; the ``note`` holds ``key=value`` fields). The file is a log that is only appended
to: an image's state is its last row still in force after the undos (:func:`replay`).

Both layouts: UTF-8 with or without a byte-order mark, fields separated by commas (or by
semicolons or tabs, as a spreadsheet may save them; the delimiter is taken from the first
line), a class given by its name or its index. Every error is a :class:`LabelFileError` naming
the file, the line and the column, and the annotation tool and ``labels=manual`` raise exactly
the same error for the same bad file. The writer, :class:`~splml.io.label_files.annotation_log.AnnotationLog`,
appends rows of this module's types only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final, Self

#: Columns of the annotation file written by ``python -m splml.annotate`` (its header row, in this order).
ANNOTATION_COLUMNS: Final[tuple[str, ...]] = (
    "image_id", "class_name", "annotator", "timestamp", "seconds", "kind", "note",
)  # fmt: skip
#: The header of files written before rows had a kind: answers and skips only.
LEGACY_COLUMNS: Final[tuple[str, ...]] = ANNOTATION_COLUMNS[:5]
BOM: Final[str] = "\ufeff"
_DELIMITERS: Final[str] = ",;\t"


class RowKind(StrEnum):
    """What one row of the annotation file records."""

    ANSWER = "answer"  #: the image's class
    CHANGE = "change"  #: a class that replaces an earlier class of the image
    SKIP = "skip"  #: left for later (comes back once every other image has a row)
    NONE = "none"  #: none of the nomenclature's classes applies
    FLAG = "flag"  #: set aside for someone else to decide, with a note saying why
    UNDO = "undo"  #: cancels the image's latest row still in force
    SHARD = "shard"  #: metadata: the part of the dataset this file covers (:class:`ShardInfo`)
    MERGED = "merged"  #: metadata: this file merges the files named in its note


#: Rows that give an image its state; the last one in force wins.
DECISION_KINDS: Final[frozenset[str]] = frozenset({RowKind.ANSWER, RowKind.CHANGE, RowKind.SKIP, RowKind.NONE,
                                                   RowKind.FLAG})  # fmt: skip
#: Decisions that carry a class.
CLASS_KINDS: Final[frozenset[str]] = frozenset({RowKind.ANSWER, RowKind.CHANGE})
#: Rows about the file rather than an image (their image_id and class_name are empty).
META_KINDS: Final[frozenset[str]] = frozenset({RowKind.SHARD, RowKind.MERGED})


def utc_timestamp() -> str:
    """The ``timestamp`` column: UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LabelFileError(ValueError):
    """A label file cannot be used as it is; the message names the file, line and column."""


@dataclass(frozen=True)
class Answer:
    """One row of the annotation file. ``kind`` left empty is inferred: an answer when there is a class, else a skip."""

    image_id: str
    class_name: str
    annotator: str = ""
    timestamp: str = ""
    seconds: float = 0.0
    kind: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", RowKind.ANSWER if self.class_name else RowKind.SKIP)
        object.__setattr__(self, "kind", str(self.kind))

    @property
    def skipped(self) -> bool:
        return self.kind == RowKind.SKIP

    @property
    def has_class(self) -> bool:
        return self.kind in CLASS_KINDS

    def as_row(self) -> list[str]:
        return [self.image_id, self.class_name, self.annotator, self.timestamp, f"{self.seconds:.2f}", self.kind,
                self.note]  # fmt: skip


def row_problem(row: Answer) -> tuple[str, str] | None:
    """(column, message) when ``row`` is not a row of the format, else None (used by the reader and the writer)."""
    kinds = [k.value for k in RowKind]
    if row.kind not in kinds:
        return "kind", f"kind {row.kind!r} is not one of {', '.join(kinds)}"
    if any(ch in text for text in (row.image_id, row.class_name, row.annotator, row.note) for ch in "\r\n"):
        return "note", "a field contains a line break"
    if row.kind in META_KINDS:
        if row.image_id or row.class_name:
            return "image_id", f"a {row.kind!r} row is about the file: its image_id and class_name are empty"
        return None
    if not row.image_id:
        return "image_id", f"a {row.kind!r} row needs an image id"
    if row.kind in CLASS_KINDS and not row.class_name:
        return "class_name", f"an {row.kind!r} row needs a class"
    if row.kind not in CLASS_KINDS and row.class_name:
        return "class_name", f"a {row.kind!r} row has no class, got {row.class_name!r}"
    if not math.isfinite(row.seconds) or row.seconds < 0:
        return "seconds", f"seconds must be a finite number >= 0, got {row.seconds}"
    return None


def replay(rows: Iterable[Answer]) -> dict[str, list[Answer]]:
    """Every image's decisions still in force, oldest first (its state is the last); an undo
    removes the last one. Raises ValueError for an undo with nothing left to undo."""
    stacks: dict[str, list[Answer]] = {}
    for row in rows:
        if row.kind in DECISION_KINDS:
            stacks.setdefault(row.image_id, []).append(row)
        elif row.kind == RowKind.UNDO:
            stack = stacks.get(row.image_id)
            if not stack:
                raise ValueError(f"undo of image {row.image_id!r}, which has no row left to undo")
            stack.pop()
    return stacks


def note_fields(note: str) -> dict[str, str]:
    """The ``key=value`` fields of a metadata row's note."""
    return dict(part.split("=", 1) for part in note.split() if "=" in part)


def dataset_fingerprint(ids: Sequence[str], class_names: Sequence[str]) -> str:
    """A short digest of the image list and the nomenclature: shard files of one dataset share it."""
    return hashlib.sha256(json.dumps([list(ids), list(class_names)]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardInfo:
    """Which part of a dataset an annotation file covers: shard ``index`` of ``count`` (1-based).

    ``overlap`` is the share of the dataset given to every shard (for the agreement between
    annotators), ``images`` how many images this shard holds, ``total`` how many the dataset
    has, ``dataset`` the :func:`dataset_fingerprint` of the whole dataset.
    """

    index: int
    count: int
    overlap: float
    seed: int
    images: int
    total: int
    dataset: str

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def note(self) -> str:
        return (f"shard={self.label} overlap={self.overlap:g} seed={self.seed} images={self.images} "
                f"total={self.total} dataset={self.dataset}")  # fmt: skip

    @classmethod
    def parse(cls, note: str, where: str = "") -> Self:
        fields = note_fields(note)
        try:
            index, count = (int(v) for v in fields["shard"].split("/"))
            return cls(index, count, float(fields["overlap"]), int(fields["seed"]), int(fields["images"]),
                       int(fields["total"]), fields["dataset"])  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise LabelFileError(f"{where}column note: not a shard description ({note!r}: {exc})") from None


@dataclass
class Annotations:
    """What :func:`read_annotations` found: the header (None for ``<id>,<class>`` rows) and every row in file order."""

    path: Path
    columns: tuple[str, ...] | None
    answers: list[Answer] = field(default_factory=list)

    def decisions(self) -> dict[str, Answer]:
        """The state of every image with a row in force: its last decision after the undos."""
        return {image_id: stack[-1] for image_id, stack in replay(self.answers).items() if stack}

    def latest(self) -> dict[str, str]:
        """The current class of every image with a decision (``""``: skipped, none of these or flagged)."""
        return {image_id: row.class_name for image_id, row in self.decisions().items()}

    def metadata(self, kind: str) -> list[Answer]:
        return [row for row in self.answers if row.kind == kind]

    @property
    def shard(self) -> ShardInfo | None:
        rows = self.metadata(RowKind.SHARD)
        return ShardInfo.parse(rows[0].note, f"{self.path}: ") if rows else None


def sniff_delimiter(text: str) -> str:
    """The field delimiter of a label file: the commonest of comma, semicolon and tab on its first line."""
    first = next((line for line in text.removeprefix(BOM).splitlines() if line.strip()), "")
    counts = {d: first.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def header_columns(text: str, delimiter: str = ",") -> tuple[str, ...] | None:
    """The columns of an annotation file's header, or None when the first line is not one."""
    rows = csv.reader(io.StringIO(text.removeprefix(BOM), newline=""), delimiter=delimiter)
    first = next(rows, [])
    columns = tuple(cell.strip() for cell in first)
    return columns if "image_id" in columns and "class_name" in columns else None


def read_annotations(
    text: str, path: str | Path, *, ids: Sequence[str] | None, class_names: Sequence[str] | None
) -> Annotations:
    """Parse the text of a label file of either layout (see the module docstring), checking every row.

    ``ids`` are the images a label may be given to, ``class_names`` the nomenclature; class
    indices are turned into names. ``None`` accepts any id / any class name as written (the
    merge, which has no dataset at hand). Raises :class:`LabelFileError` naming ``path``, the
    line and the column.
    """
    path = Path(path)
    text = text.removeprefix(BOM)
    delimiter = sniff_delimiter(text)
    known_ids = None if ids is None else set(ids)
    index_of_class = None if class_names is None else {name: c for c, name in enumerate(class_names)}
    columns = header_columns(text, delimiter)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    found = Annotations(path, columns)
    seen: dict[str, int] = {}
    stacks: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if columns is not None and line == 1:
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}, line {line}"
        width = len(columns) if columns is not None else 2
        if len(row) != width:
            raise LabelFileError(_width_error(where, columns, row, text, line))
        if columns is not None:
            cells = {name: cell.strip() for name, cell in zip(columns, row, strict=True)}
            id_column, class_column = "image_id", "class_name"
        else:
            cells = {"image_id": row[0].strip(), "class_name": row[1].strip()}
            id_column, class_column = "1 (image id)", "2 (class)"
        image_id, given = cells["image_id"], cells["class_name"]
        class_name = _class_name(given, index_of_class, class_names)
        if columns is None and class_name is None and line == 1 and (known_ids is None or image_id not in known_ids):
            continue  # the header of an <id>,<class> file
        kind = cells.get("kind", "")
        if kind in META_KINDS:
            image_id = image_id or ""
        elif known_ids is not None and image_id not in known_ids:
            raise LabelFileError(
                f"{where}, column {id_column}: image id {image_id!r} is not in the training split, the images that "
                "labels=manual and splml.annotate ask a label for (was the file written for another dataset or "
                "other dataset options?)"
            )
        if class_name is None and (given or columns is None):
            choices = (
                "a class name" if class_names is None else f"a class name nor an index in 0..{len(class_names) - 1}"
            )
            raise LabelFileError(f"{where}, column {class_column}: class {given!r} is neither {choices}")
        if columns is None:
            if image_id in seen:
                raise LabelFileError(
                    f"{where}, column {id_column}: image id {image_id!r} already labelled on line {seen[image_id]}"
                )
            seen[image_id] = line
        seconds = cells.get("seconds", "") or "0"
        try:
            spent = float(seconds if delimiter == "," else seconds.replace(",", "."))
        except ValueError:
            raise LabelFileError(f"{where}, column seconds: seconds {seconds!r} is not a number") from None
        answer = Answer(image_id, class_name or "", cells.get("annotator", ""), cells.get("timestamp", ""), spent,
                        kind, cells.get("note", ""))  # fmt: skip
        problem = row_problem(answer)
        if problem is not None:
            raise LabelFileError(f"{where}, column {problem[0]}: {problem[1]}")
        if answer.kind in DECISION_KINDS:
            stacks[image_id] = stacks.get(image_id, 0) + 1
        elif answer.kind == RowKind.UNDO:
            if not stacks.get(image_id):
                raise LabelFileError(
                    f"{where}, column kind: undo of image {image_id!r}, which has no earlier row left to undo"
                )
            stacks[image_id] -= 1
        elif answer.kind == RowKind.SHARD:
            ShardInfo.parse(answer.note, f"{where}, ")
        found.answers.append(answer)
    return found


def read_annotation_file(
    path: str | Path, *, ids: Sequence[str] | None, class_names: Sequence[str] | None
) -> Annotations:
    """:func:`read_annotations` of the file ``path`` (UTF-8, a byte-order mark is ignored)."""
    path = Path(path)
    return read_annotations(decode_utf8(path.read_bytes(), path), path, ids=ids, class_names=class_names)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """The text of a label file; a byte that is not UTF-8 is an error naming its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LabelFileError(
            f"{path}, line {line}, character {column}: not UTF-8 text ({exc.reason}); save the file as CSV UTF-8"
        ) from exc


def _width_error(where: str, columns: tuple[str, ...] | None, row: list[str], text: str, line: int) -> str:
    width = len(columns) if columns is not None else 2
    layout = ",".join(columns) if columns is not None else "id, class"
    if columns is not None and len(row) < width:
        detail = f": column(s) {', '.join(columns[len(row) :])} missing"
    elif columns is not None:
        detail = f": {len(row) - width} field(s) after column {columns[-1]}"
    else:
        detail = ": column 2 (class) missing" if len(row) < width else ": fields after column 2 (class)"
    cut = " (a line cut short by a crash is repaired by starting python -m splml.annotate on the file)"
    last = columns is not None and not text.endswith("\n") and line == _last_line(text)
    return f"{where}: expected {width} fields ({layout}), got {len(row)}: {row}{detail}{cut if last else ''}"


def _class_name(text: str, index_of_class: dict[str, int] | None, class_names: Sequence[str] | None) -> str | None:
    if index_of_class is None or class_names is None:
        return text or None
    if text in index_of_class:
        return text
    if text.lstrip("-").isdigit():
        value = int(text)
        if 0 <= value < len(class_names):
            return class_names[value]
    return None


def _last_line(text: str) -> int:
    """The number of the last line that :class:`csv.reader` reports for ``text``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    for _ in reader:
        pass
    return reader.line_num


def csv_line(cells: Sequence[str]) -> bytes:
    """One row as the writer puts it in the file: comma-separated, quoted where needed, ``\\n``-terminated."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")
