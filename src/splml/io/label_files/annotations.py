"""The annotation file: one reader for ``labels=manual`` and ``splml.annotate``, one append-only writer.

Two layouts are read, by :func:`read_annotations` only:

* the annotation file of ``python -m splml.annotate``: a header naming at least ``image_id``
  and ``class_name`` (any column order; extra columns are kept in the file and not used), then
  one row per answer. It is a log: the last row of an image wins, and an empty class marks an
  image the annotator skipped. The tool writes :data:`ANNOTATION_COLUMNS`;
* ``<id>,<class>`` rows, optionally under a header (detected when its second field is neither
  a class nor an index and its first is no image of the list); an id appearing twice is an error.

Both: UTF-8 with or without a byte-order mark, a class given by its name or its index, an
image id that is not in the list or an unknown class is an error naming the file and line, and
both the annotation tool and ``labels=manual`` raise exactly the same :class:`LabelFileError`
for the same bad file.

Writing (:class:`AnnotationLog`): a row is written with a single ``write`` on an ``O_APPEND``
descriptor and ``fsync``-ed before :meth:`AnnotationLog.append` returns, and the server answers
the page only after that. A process killed mid-write can therefore leave at most one
half-written last line (no newline at the end of the file), which was never confirmed to
anyone; opening the file cuts it off (and reports it) so that every earlier row stays intact. A
write that fails (disk full) is rolled back the same way before the error is raised. One
writer: the file is locked with ``flock`` for as long as it is open, so a second
``splml.annotate`` on the same file stops with an error instead of interleaving rows. The lock
belongs to the open descriptor and goes away with the process, however it ends.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

#: Columns of the annotation file written by ``python -m splml.annotate`` (its header row, in this
#: order). A row with an empty ``class_name`` records a skipped image; later rows for an image
#: replace earlier ones (an answer changed after going back).
ANNOTATION_COLUMNS: Final[tuple[str, ...]] = ("image_id", "class_name", "annotator", "timestamp", "seconds")
_BOM: Final[str] = "\ufeff"


class LabelFileError(ValueError):
    """A label file cannot be used as it is; the message names the file and line."""


class AnnotationFileBusy(RuntimeError):
    """Another process holds the annotation file's lock."""


@dataclass(frozen=True)
class Answer:
    """One row of the annotation file; ``class_name == ""`` records a skip."""

    image_id: str
    class_name: str
    annotator: str = ""
    timestamp: str = ""
    seconds: float = 0.0

    @property
    def skipped(self) -> bool:
        return self.class_name == ""

    def as_row(self) -> list[str]:
        return [self.image_id, self.class_name, self.annotator, self.timestamp, f"{self.seconds:.2f}"]


@dataclass
class Annotations:
    """What :func:`read_annotations` found: the header (None for ``<id>,<class>`` rows) and each answer."""

    path: Path
    columns: tuple[str, ...] | None
    answers: list[Answer] = field(default_factory=list)

    def latest(self) -> dict[str, str]:
        """The current class name of every image with a row (the last row wins; ``""`` = skipped)."""
        return {a.image_id: a.class_name for a in self.answers}


def header_columns(text: str) -> tuple[str, ...] | None:
    """The columns of an annotation file's header, or None when the first line is not one."""
    rows = csv.reader(io.StringIO(text.removeprefix(_BOM), newline=""))
    first = next(rows, [])
    columns = tuple(cell.strip() for cell in first)
    return columns if "image_id" in columns and "class_name" in columns else None


def read_annotations(text: str, path: str | Path, *, ids: Sequence[str], class_names: Sequence[str]) -> Annotations:
    """Parse the text of a label file of either layout (see the module docstring), checking every row.

    ``ids`` are the images a label may be given to, ``class_names`` the nomenclature; class
    indices are turned into names. Raises :class:`LabelFileError` naming ``path`` and the line.
    """
    path = Path(path)
    text = text.removeprefix(_BOM)
    known_ids = set(ids)
    index_of_class = {name: c for c, name in enumerate(class_names)}
    columns = header_columns(text)
    reader = csv.reader(io.StringIO(text, newline=""))
    found = Annotations(path, columns)
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if columns is not None and line == 1:
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}, line {line}"
        width = len(columns) if columns is not None else 2
        if len(row) != width:
            layout = ",".join(columns) if columns is not None else "id, class"
            cut = " (a line cut short by a crash is repaired by starting python -m splml.annotate on the file)"
            last = columns is not None and not text.endswith("\n") and line == _last_line(text)
            raise LabelFileError(
                f"{where}: expected {width} fields ({layout}), got {len(row)}: {row}{cut if last else ''}"
            )
        cells = dict(zip(columns, row, strict=True)) if columns is not None else {}
        image_id = (cells["image_id"] if columns is not None else row[0]).strip()
        given = (cells["class_name"] if columns is not None else row[1]).strip()
        class_name = _class_name(given, index_of_class, class_names)
        if columns is None and class_name is None and line == 1 and image_id not in known_ids:
            continue  # the header of an <id>,<class> file
        if image_id not in known_ids:
            raise LabelFileError(
                f"{where}: image id {image_id!r} is not in the training split, the images that labels=manual "
                "and splml.annotate ask a label for (was the file written for another dataset or other dataset "
                "options?)"
            )
        if class_name is None and (given or columns is None):
            raise LabelFileError(
                f"{where}: class {given!r} is neither a class name nor an index in 0..{len(class_names) - 1}"
            )
        if columns is None:
            if image_id in seen:
                raise LabelFileError(f"{where}: image id {image_id!r} already labelled on line {seen[image_id]}")
            seen[image_id] = line
        seconds = cells.get("seconds", "0")
        try:
            spent = float(seconds)
        except ValueError:
            raise LabelFileError(f"{where}: seconds {seconds!r} is not a number") from None
        found.answers.append(
            Answer(image_id, class_name or "", cells.get("annotator", ""), cells.get("timestamp", ""), spent)
        )
    return found


def read_annotation_file(path: str | Path, *, ids: Sequence[str], class_names: Sequence[str]) -> Annotations:
    """:func:`read_annotations` of the file ``path`` (UTF-8, a byte-order mark is ignored)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not UTF-8 text ({exc})") from exc
    return read_annotations(text, path, ids=ids, class_names=class_names)


def _class_name(text: str, index_of_class: dict[str, int], class_names: Sequence[str]) -> str | None:
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


def _csv_line(cells: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")


class AnnotationLog:
    """The locked, append-only annotation file of one annotation session: the writer of the format.

    ``ids`` and ``class_names`` are the dataset's: a row naming anything else is an error (the
    file belongs to another dataset, or was edited by hand). After opening, ``answers`` holds
    every row in file order and ``repaired`` the bytes of a half-written last line that was cut
    off (``b""`` when the file was whole).
    """

    def __init__(self, path: str | Path, ids: Sequence[str], class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self._ids = list(ids)
        self._known_ids = set(ids)
        self._class_names = list(class_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AnnotationFileBusy(
                f"{self.path} is open in another splml.annotate (it holds the file's lock); "
                "stop that one or give this one another out= file"
            ) from None
        self._fd: int | None = fd
        try:
            if created:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            data = self._content()
            # Only whole lines are read; the half-written last line is cut off only once the rest
            # proved to be this dataset's annotation file (any other file is left as it was).
            keep = len(data) if not data or data.endswith(b"\n") else data.rfind(b"\n") + 1
            self.answers: list[Answer] = self._read(data, keep)
            self.repaired = data[keep:]
            if self.repaired:
                os.ftruncate(fd, keep)
                os.fsync(fd)
            if os.fstat(fd).st_size == 0:
                self._write(_csv_line(ANNOTATION_COLUMNS))
        except BaseException:
            self.close()
            raise

    # -- reading and repair ------------------------------------------------------------------
    def _content(self) -> bytes:
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0) if size else b""

    def _read(self, data: bytes, keep: int) -> list[Answer]:
        """The answers of the whole lines ``data[:keep]``, once their header proved the file ours."""
        try:
            text = data[:keep].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LabelFileError(f"{self.path}: not UTF-8 text ({exc})") from exc
        if text and header_columns(text) != ANNOTATION_COLUMNS:
            first = next(csv.reader(io.StringIO(text.removeprefix(_BOM), newline="")), [])
            raise LabelFileError(
                f"{self.path} exists and is not an annotation file (its first line is {first}, expected "
                f"{','.join(ANNOTATION_COLUMNS)}); give out= a new file name"
            )
        return read_annotations(text, self.path, ids=self._ids, class_names=self._class_names).answers

    # -- writing -----------------------------------------------------------------------------
    def append(self, answer: Answer) -> None:
        """Write one row and return only once it is on disk."""
        if answer.image_id not in self._known_ids:
            raise ValueError(f"image {answer.image_id!r} is not in the dataset")
        if answer.class_name and answer.class_name not in self._class_names:
            raise ValueError(f"class {answer.class_name!r} is not in the nomenclature")
        if not math.isfinite(answer.seconds) or answer.seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {answer.seconds}")
        self._write(_csv_line(answer.as_row()))
        self.answers.append(answer)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            os.fsync(self._fd)
        except BaseException:
            # Leave no half row behind for the next append to be glued to.
            os.ftruncate(self._fd, size)
            raise

    def close(self) -> None:
        """Release the lock and the file (also done by the OS when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
