"""The annotation file: an append-only CSV log that survives a crash at any moment.

Rows are ``image_id,class_name,annotator,timestamp,seconds`` under a header
(:data:`splml.data.labels.ANNOTATION_COLUMNS`, the format ``labels=manual`` reads). Every
answer is one new row: a skipped image gets a row with an empty class, and an answer changed
after going back is a new row too, so the file is the full history and its last row per image
is the current answer.

Durability: a row is written with a single ``write`` on an ``O_APPEND`` descriptor and
``fsync``-ed before :meth:`AnnotationLog.append` returns, and the server answers the page only
after that. A process killed mid-write can therefore leave at most one half-written last line
(no newline at the end of the file), which was never confirmed to anyone; opening the file cuts
it off (and reports it) so that every earlier row stays intact. A write that fails (disk full)
is rolled back the same way before the error is raised.

One writer: the file is locked with ``flock`` for as long as it is open, so a second
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
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from splml.data.labels import ANNOTATION_COLUMNS


class AnnotationFileError(ValueError):
    """The annotation file cannot be used as it is; the message names the file and line."""


class AnnotationFileBusy(RuntimeError):
    """Another process holds the annotation file's lock."""


@dataclass(frozen=True)
class Answer:
    """One row of the annotation file; ``class_name == ""`` records a skip."""

    image_id: str
    class_name: str
    annotator: str
    timestamp: str
    seconds: float

    @property
    def skipped(self) -> bool:
        return self.class_name == ""

    def as_row(self) -> list[str]:
        return [self.image_id, self.class_name, self.annotator, self.timestamp, f"{self.seconds:.2f}"]


def _csv_line(cells: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")


class AnnotationLog:
    """The locked, append-only annotation file of one annotation session.

    ``ids`` and ``class_names`` are the dataset's: a row naming anything else is an error (the
    file belongs to another dataset, or was edited by hand). After opening, ``answers`` holds
    every row in file order and ``repaired`` the bytes of a half-written last line that was cut
    off (``b""`` when the file was whole).
    """

    def __init__(self, path: str | Path, ids: Sequence[str], class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self._ids = set(ids)
        self._class_names = set(class_names)
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
            self.answers: list[Answer] = self._read(data[:keep])
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

    def _read(self, data: bytes) -> list[Answer]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnnotationFileError(f"{self.path}: not UTF-8 text ({exc})") from exc
        reader = csv.reader(io.StringIO(text, newline=""))
        answers: list[Answer] = []
        for row in reader:
            line = reader.line_num
            if line == 1:
                if tuple(cell.strip() for cell in row) != ANNOTATION_COLUMNS:
                    raise AnnotationFileError(
                        f"{self.path} exists and is not an annotation file (its first line is {row}, expected "
                        f"{','.join(ANNOTATION_COLUMNS)}); give out= a new file name"
                    )
                continue
            if not row:
                continue
            answers.append(self._parse(row, line))
        return answers

    def _parse(self, row: list[str], line: int) -> Answer:
        where = f"{self.path}, line {line}"
        if len(row) != len(ANNOTATION_COLUMNS):
            raise AnnotationFileError(f"{where}: expected {len(ANNOTATION_COLUMNS)} fields, got {len(row)}: {row}")
        image_id, class_name, annotator, timestamp, seconds = row
        if image_id not in self._ids:
            raise AnnotationFileError(
                f"{where}: image {image_id!r} is not in this dataset's list of images to annotate "
                "(was the file written for another dataset or other dataset options?)"
            )
        if class_name and class_name not in self._class_names:
            raise AnnotationFileError(f"{where}: class {class_name!r} is not in this dataset's nomenclature")
        try:
            spent = float(seconds)
        except ValueError:
            raise AnnotationFileError(f"{where}: seconds {seconds!r} is not a number") from None
        return Answer(image_id, class_name, annotator, timestamp, spent)

    # -- writing -----------------------------------------------------------------------------
    def append(self, answer: Answer) -> None:
        """Write one row and return only once it is on disk."""
        if answer.image_id not in self._ids:
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
