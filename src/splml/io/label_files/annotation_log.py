"""The one writer of the annotation file (:mod:`.annotations` defines its rows and reads it).

A row is written with a single ``write`` on an ``O_APPEND`` descriptor and ``fsync``-ed before
:meth:`AnnotationLog.append` returns, and the server answers the page only after that. A process
killed mid-write can therefore leave at most one half-written last line (no newline at the end
of the file), which was never confirmed to anyone; opening the file cuts it off (and reports it)
so that every earlier row stays intact. A write that fails (disk full) is rolled back the same
way before the error is raised. Nothing already written is ever changed: an undo or a changed
answer is a new row.

One exception, made safely: a file of the earlier five-column layout (no ``kind``, ``note``) is
given the two columns when it is opened, so that the new row types can be appended. The new
file (the same rows as the reader read them, each with its inferred kind and an empty note) is
written beside it,
``fsync``-ed and renamed over it in one step, so a crash leaves either the old file or the new
one, never a mixture.

One writer: the file is locked with ``flock`` for as long as it is open, so a second
``splml.annotate`` on the same file stops with an error instead of interleaving rows. The lock
belongs to the open descriptor and goes away with the process, however it ends.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from splml.io.label_files.annotations import (
    ANNOTATION_COLUMNS,
    BOM,
    CLASS_KINDS,
    LEGACY_COLUMNS,
    META_KINDS,
    Answer,
    LabelFileError,
    csv_line,
    decode_utf8,
    header_columns,
    read_annotations,
    replay,
    row_problem,
)


class AnnotationFileBusy(RuntimeError):
    """Another process holds the annotation file's lock."""


class AnnotationLog:
    """The locked, append-only annotation file of one annotation session.

    ``ids`` and ``class_names`` are the dataset's: a row naming anything else is an error (the
    file belongs to another dataset, or was edited by hand). After opening, ``answers`` holds
    every row in file order, ``repaired`` the bytes of a half-written last line that was cut
    off (``b""`` when the file was whole) and ``upgraded`` whether a five-column file was given
    its ``kind`` and ``note`` columns.
    """

    def __init__(self, path: str | Path, ids: Sequence[str], class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self._ids = list(ids)
        self._known_ids = set(ids)
        self._class_names = list(class_names)
        self._classes = set(class_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd: int | None = _open_locked(self.path)
        self.upgraded = False
        try:
            if created:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            data = self._content()
            # Only whole lines are read; the half-written last line is cut off only once the rest
            # proved to be this dataset's annotation file (any other file is left as it was).
            keep = len(data) if not data or data.endswith(b"\n") else data.rfind(b"\n") + 1
            columns, self.answers = self._read(data, keep)
            self.repaired = data[keep:]
            if self.repaired:
                os.ftruncate(self._fd, keep)
                os.fsync(self._fd)
            if columns == LEGACY_COLUMNS:
                self._upgrade()
            if os.fstat(self._fd).st_size == 0:
                self._write(csv_line(ANNOTATION_COLUMNS))
            self._stacks = {image_id: len(stack) for image_id, stack in replay(self.answers).items()}
        except BaseException:
            self.close()
            raise

    # -- reading, repair, upgrade ------------------------------------------------------------
    def _content(self) -> bytes:
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0) if size else b""

    def _read(self, data: bytes, keep: int) -> tuple[tuple[str, ...] | None, list[Answer]]:
        """The header and rows of the whole lines ``data[:keep]``, once their header proved the file ours."""
        text = decode_utf8(data[:keep], self.path)
        columns = header_columns(text)
        if text and columns not in (ANNOTATION_COLUMNS, LEGACY_COLUMNS):
            first = next(csv.reader(io.StringIO(text.removeprefix(BOM), newline="")), [])
            raise LabelFileError(
                f"{self.path} exists and is not an annotation file (its first line is {first}, expected "
                f"{','.join(ANNOTATION_COLUMNS)}, comma-separated); give out= a new file name"
            )
        return columns, read_annotations(text, self.path, ids=self._ids, class_names=self._class_names).answers

    def _upgrade(self) -> None:
        """Give a five-column file its kind and note columns (atomically, see the module docstring)."""
        staged = self.path.with_name(self.path.name + ".upgrading")
        body = csv_line(ANNOTATION_COLUMNS) + b"".join(csv_line(row.as_row()) for row in self.answers)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        new_fd = os.open(staged, os.O_RDWR | os.O_APPEND)
        fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows the staged name
        os.replace(staged, self.path)
        _fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = new_fd
        self.upgraded = True

    # -- writing -----------------------------------------------------------------------------
    def check(self, row: Answer) -> None:
        """Raise ValueError unless ``row`` may be appended to this file."""
        problem = row_problem(row)
        if problem is not None:
            raise ValueError(f"not a valid row ({problem[0]}: {problem[1]}): {row}")
        if row.kind not in META_KINDS and row.image_id not in self._known_ids:
            raise ValueError(f"image {row.image_id!r} is not in the dataset")
        if row.kind in CLASS_KINDS and row.class_name not in self._classes:
            raise ValueError(f"class {row.class_name!r} is not in the nomenclature")

    def append(self, row: Answer) -> None:
        """Write one row and return only once it is on disk."""
        self.extend([row])

    def extend(self, rows: Iterable[Answer]) -> None:
        """Write several rows with one write and one ``fsync`` (all or none of them are kept)."""
        rows = list(rows)
        stacks = dict(self._stacks)
        for row in rows:
            self.check(row)
            if row.kind == "undo":
                if not stacks.get(row.image_id):
                    raise ValueError(f"undo of image {row.image_id!r}, which has no row left to undo")
                stacks[row.image_id] -= 1
            elif row.kind not in META_KINDS:
                stacks[row.image_id] = stacks.get(row.image_id, 0) + 1
        self._write(b"".join(csv_line(row.as_row()) for row in rows))
        self._stacks = stacks
        self.answers.extend(rows)

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


def _open_locked(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock (the file created when missing)."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AnnotationFileBusy(
                f"{path} is open in another splml.annotate (it holds the file's lock); "
                "stop that one or give this one another out= file"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the name was given to a new file (an upgrade) between open and lock: open that one
    raise AnnotationFileBusy(f"{path} keeps being replaced while it is opened")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
