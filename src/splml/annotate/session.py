"""What the annotation page is showing, and what each button does to the annotation file.

One :class:`AnnotationSession` per server. It owns the *cursor* (the image every open tab
shows) and changes it only under its lock, together with the row it writes, so concurrent
requests are applied one at a time. Each time the cursor is set the session issues a new
*display token*; every request names the image and the token it acts on, and a request with
another image or an older token (a second tab that has fallen behind, a key held down, a double
click) is refused with :class:`Conflict` and changes nothing, and the page reloads the current
state. So one display of an image takes at most one answer.

Queue order: images are visited in dataset order. After an answer, a skip, "none of these" or
a flag, the cursor moves to the next image (cyclically) that has no row yet; once every image
has a row, to the next skipped one, so skipped images come back at the end. Restarting on the
same file resumes at the first image without a row (or, when there is none, at the first
skipped image). Flagged and "none of these" images do not come back by themselves.

Trails leave the queue for a while and return to it at their end (or on Esc):

* Back walks the answers in the order they were given, newest first (a changed answer counts
  as given when it changed); Back again goes further back, Skip ("keep, go on") or a new
  answer goes forward again;
* Undo writes an ``undo`` row for the newest answer still in force (the image's previous
  state returns, in the file and on the page) and shows that image to be answered again;
  after several undos, the images taken back are shown in turn;
* Go to shows one image by id or position, a history entry is Go to for its image;
* Review walks the images whose answer is one class, in dataset order.

Answering an image again appends a ``change`` row (the last row in force wins); Skip on an
image that already has a state keeps it and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splml.annotate.items import UNLABELLED_COLOUR, AnnotationItems
from splml.annotate.shards import shard_mismatch
from splml.annotate.states import ImageStates
from splml.io.errors import DataFormatError
from splml.io.label_files import (
    CLASS_KINDS,
    DECISION_KINDS,
    AnnotationLog,
    Answer,
    LabelFileError,
    RowKind,
    ShardInfo,
)
from splml.io.label_files.annotations import utc_timestamp

log = logging.getLogger(__name__)

#: Candidate classes shown at once (keys 1-4).
BATCH_SIZE = 4
#: Longest note of a flag.
MAX_NOTE = 500


class BadRequest(ValueError):
    """The request itself is wrong (unknown class, bad number); answered with 400."""


class Conflict(RuntimeError):
    """The request is for another display than the current one; answered with 409."""


@dataclass
class Trail:
    """Images visited outside the queue order: ``kind`` history, review, undo or jump."""

    kind: str
    indices: list[int]
    position: int
    label: str = ""


def candidate_order(image_id: str, class_names: tuple[str, ...], seed: int) -> list[str]:
    """The classes in a random order that depends only on (seed, image id), so it is the same
    after Back, after a reload and after a restart."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [class_names[k] for k in rng.permutation(len(class_names))]


def candidate_batches(order: list[str], size: int = BATCH_SIZE) -> list[list[str]]:
    """Consecutive groups of ``size`` classes covering ``order``; the last is filled up from the
    start of the order so every batch has ``size`` buttons (when there are that many classes)."""
    size = min(size, len(order))
    count = math.ceil(len(order) / size)
    return [[order[(b * size + j) % len(order)] for j in range(size)] for b in range(count)]


def check_annotator(name: str) -> str:
    name = str(name).strip()
    if not name or len(name) > 100 or any(not ch.isprintable() for ch in name):
        raise ValueError(f"annotator must be 1-100 printable characters, got {name!r}")
    return name


class AnnotationSession:
    """The queue of images over an open :class:`AnnotationLog` (see the module docstring).

    ``shard`` is the part of the dataset ``items`` are (recorded in the file's first row, and
    checked against it on a restart); ``next_steps`` the commands the finished screen shows;
    ``min_view_ms`` how long the page shows an image before it takes input for it.
    """

    def __init__(
        self,
        items: AnnotationItems,
        log: AnnotationLog,
        annotator: str,
        *,
        order_seed: int = 0,
        shard: ShardInfo | None = None,
        next_steps: list[str] | None = None,
        history_size: int = 12,
        min_view_ms: int = 250,
    ) -> None:
        self.items = items
        self.log = log
        self.annotator = check_annotator(annotator)
        self.order_seed = int(order_seed)
        self.shard = shard
        self.next_steps = next_steps or [
            f"python -m splml.train dataset=<this dataset and its options> labels=manual labels.file={log.path}"
        ]
        self.history_size = int(history_size)
        self.min_view_ms = int(min_view_ms)
        #: Why item i cannot be shown (None when it can); the server renders to find out.
        self.image_problem: Callable[[int], str | None] = lambda i: None
        #: Why item i could not be shown, when that is known already (without rendering it).
        self.known_problem: Callable[[int], str | None] = lambda i: None
        self._lock = threading.Lock()
        self._classes = frozenset(items.class_names)
        self.states = ImageStates(items.ids)
        self._check_shard()
        for row in log.answers:
            self.states.apply(row)
        self._queue_after: int | None = None
        self.trail: Trail | None = None
        self.cursor: int | None = self._next_open(None)
        self.display = secrets.token_urlsafe(9)

    def _check_shard(self) -> None:
        recorded = [row for row in self.log.answers if row.kind == RowKind.SHARD]
        if recorded:
            found = ShardInfo.parse(recorded[0].note, f"{self.log.path}: ")
            if found != self.shard:
                raise shard_mismatch(self.log.path, found, self.shard)
        elif self.shard is not None:
            if any(row.kind in DECISION_KINDS for row in self.log.answers):
                raise LabelFileError(f"{self.log.path} has answers made without a shard; give out= a new file")
            self.log.append(Answer("", "", self.annotator, utc_timestamp(), 0.0, RowKind.SHARD, self.shard.note()))

    # -- image states ------------------------------------------------------------------------
    def top(self, i: int) -> Answer | None:
        """The row in force for item ``i`` (None: no row)."""
        return self.states.top(i)

    def status(self, i: int) -> str:
        return self.states.status(i)

    def _write(self, row: Answer) -> None:
        self.log.append(row)  # on disk before the state changes and before the page hears of it
        self.states.apply(row)

    def _row(self, i: int, kind: str, class_name: str = "", seconds: float = 0.0, note: str = "") -> Answer:
        return Answer(self.items.ids[i], class_name, self.annotator, utc_timestamp(), seconds, kind, note)

    # -- moving ------------------------------------------------------------------------------
    def _next_open(self, after: int | None) -> int | None:
        """The first image after ``after`` (cyclically, ``after`` itself last) without a row,
        else the first skipped one, else None (every image has a state)."""
        n = len(self.items)
        start = -1 if after is None else after
        for wanted in ("pending", "skipped"):
            if not self.states.status_counts[wanted]:
                continue
            for i in ((start + k) % n for k in range(1, n + 1)):
                if self.status(i) == wanted:
                    return i
        return None

    def _show(self, cursor: int | None) -> None:
        self.cursor = cursor
        self.display = secrets.token_urlsafe(9)

    def _follow(self, trail: Trail | None) -> None:
        """Show the trail's image, or the queue's when there is no trail."""
        self.trail = trail
        self._show(self._next_open(self._queue_after) if trail is None else trail.indices[trail.position])

    def _advance(self, i: int) -> None:
        """Go on after an action on image ``i``: along the trail, else along the queue."""
        if self.trail is None:
            self._queue_after = i
            self._follow(None)
        elif self.trail.position + 1 < len(self.trail.indices):
            self.trail.position += 1
            self._follow(self.trail)
        else:
            self._follow(None)

    def _begin(self, image_id: Any, display: Any, *, finished_ok: bool = False) -> None:
        """Refuse a request that is not for the display the pages are showing now."""
        if not (image_id is None or isinstance(image_id, str)):
            raise BadRequest(f"id must be an image id (a string), got {image_id!r}")
        if not isinstance(display, str) or not display.isascii() or len(display) > 64:
            raise BadRequest(f"display must be the display token sent with the image, got {display!r:.80}")
        if self.cursor is None and not finished_ok:
            raise Conflict("every image has a state already: there is no current image to answer")
        current = None if self.cursor is None else self.items.ids[self.cursor]
        if image_id != current or not secrets.compare_digest(display, self.display):
            raise Conflict(
                f"that request was for {'image ' + repr(image_id) if image_id else 'the finished screen'} as shown "
                "before (another tab, a held key or a double click acted on it already); nothing was saved for it, "
                "the page now shows the current image"
            )

    # -- actions that write ------------------------------------------------------------------
    def answer(self, image_id: Any, display: Any, class_name: Any, seconds: Any) -> dict[str, Any]:
        """Record ``class_name`` for the current image and go on."""
        if not isinstance(class_name, str) or class_name not in self._classes:
            raise BadRequest(f"unknown class {class_name!r}: not in the nomenclature of {self.items.description}")
        spent = _seconds(seconds)
        with self._lock:
            self._begin(image_id, display)
            i = self.cursor
            self._require_showable(i)
            old = self.top(i)
            if old is None or not old.has_class:
                self._write(self._row(i, RowKind.ANSWER, class_name, spent))
            elif old.class_name != class_name:
                self._write(self._row(i, RowKind.CHANGE, class_name, spent))
            self._advance(i)
            return self._state()

    def skip(self, image_id: Any, display: Any, seconds: Any) -> dict[str, Any]:
        """Leave the current image for later (a ``skip`` row), or keep its state and go on."""
        spent = _seconds(seconds)
        with self._lock:
            self._begin(image_id, display)
            i = self.cursor
            if self.status(i) == "pending":
                self._write(self._row(i, RowKind.SKIP, seconds=spent))
            self._advance(i)
            return self._state()

    def none_of_these(self, image_id: Any, display: Any, seconds: Any) -> dict[str, Any]:
        """Record that no class of the nomenclature applies to the current image."""
        spent = _seconds(seconds)
        with self._lock:
            self._begin(image_id, display)
            i = self.cursor
            self._require_showable(i)
            if self.status(i) != "none":
                self._write(self._row(i, RowKind.NONE, seconds=spent))
            self._advance(i)
            return self._state()

    def flag(self, image_id: Any, display: Any, note: Any, seconds: Any) -> dict[str, Any]:
        """Set the current image aside with a note saying why (it gets no class)."""
        if not isinstance(note, str) or not note.strip():
            raise BadRequest("a flag needs a note saying what is wrong with the image")
        note = re.sub(r"\s+", " ", "".join(ch if ch.isprintable() else " " for ch in note)).strip()
        if len(note) > MAX_NOTE:
            raise BadRequest(f"the note is longer than {MAX_NOTE} characters")
        spent = _seconds(seconds)
        with self._lock:
            self._begin(image_id, display)
            i = self.cursor
            self._write(self._row(i, RowKind.FLAG, seconds=spent, note=note))
            self._advance(i)
            return self._state()

    def undo(self, image_id: Any, display: Any) -> dict[str, Any]:
        """Take back the newest answer still in force and show its image again."""
        with self._lock:
            self._begin(image_id, display, finished_ok=True)
            i = self.states.newest()
            if i is None:
                return self._state(notice="There is no answer to undo.")
            target = self.items.ids[i]
            undone = self.top(i)
            self._write(self._row(i, RowKind.UNDO, note=f"undid {_describe(undone)} of {undone.timestamp}"))
            # Undo after undo: the images taken back so far are shown again in turn, newest first.
            taken = self.trail.indices[self.trail.position :] if self.trail and self.trail.kind == "undo" else []
            self._follow(Trail("undo", [i, *(j for j in taken if j != i)], 0))
            return self._state(notice=f"Undone: {_describe(undone)} for {target} (now {self.status(i)}).")

    # -- actions that only move --------------------------------------------------------------
    def back(self, image_id: Any, display: Any) -> dict[str, Any]:
        """The image answered before (in the order of the answers); within a review, the previous one."""
        with self._lock:
            self._begin(image_id, display, finished_ok=True)
            trail = self.trail
            if trail is not None and trail.kind in ("history", "review"):
                if trail.position == 0:
                    first = "the oldest answer" if trail.kind == "history" else "the first image of this review"
                    return self._state(notice=f"This is {first}: there is nothing before it.")
                trail.position -= 1
                self._follow(trail)
                return self._state()
            history = [i for i in self.states.history() if i != self.cursor][::-1]
            if not history:
                return self._state(notice="Nothing is answered yet: there is nothing to go back to.")
            self._follow(Trail("history", history, len(history) - 1))
            return self._state()

    def goto(self, image_id: Any, display: Any, target: Any) -> dict[str, Any]:
        """Show the image ``target``: an image id, or a position ``1``..``N`` (``"#17"`` or ``17``)."""
        i = self._find(target)
        with self._lock:
            self._begin(image_id, display, finished_ok=True)
            self._follow(Trail("jump", [i], 0))
            return self._state()

    def review(self, image_id: Any, display: Any, class_name: Any) -> dict[str, Any]:
        """Walk the images answered ``class_name``; an empty class returns to the queue."""
        if class_name not in (None, "") and class_name not in self._classes:
            raise BadRequest(f"unknown class {class_name!r}: not in the nomenclature of {self.items.description}")
        with self._lock:
            self._begin(image_id, display, finished_ok=True)
            if not class_name:
                self._follow(None)
                return self._state()
            members = self.states.with_class(class_name)
            if not members:
                return self._state(notice=f"No image has the answer {class_name!r}.")
            self._follow(Trail("review", members, 0, class_name))
            return self._state()

    def _find(self, target: Any) -> int:
        if isinstance(target, str) and target in self.states.index:
            return self.states.index[target]
        text = str(target).strip().removeprefix("#") if isinstance(target, (str, int)) else ""
        digits = not isinstance(target, bool) and text.isascii() and text.isdigit() and len(text) < 12
        if digits and 1 <= int(text) <= len(self.items):
            return int(text) - 1
        raise BadRequest(f"no image {target!r}: give an image id or a position 1..{len(self.items)}")

    def _require_showable(self, i: int) -> None:
        problem = self.image_problem(i)
        if problem is not None:
            raise Conflict(f"{problem}; an image that cannot be shown can only be skipped or flagged")

    # -- what the page shows -----------------------------------------------------------------
    def state(self, notice: str | None = None) -> dict[str, Any]:
        with self._lock:
            return self._state(notice)

    def _state(self, notice: str | None = None) -> dict[str, Any]:
        names = self.items.class_names
        counts = self.states.status_counts
        total = len(self.items)
        rate = self.states.rate_per_minute()
        left = counts["pending"] + counts["skipped"]
        newest = None if self.states.newest() is None else self.top(self.states.newest())
        state: dict[str, Any] = {
            "dataset": self.items.description,
            "file": str(self.log.path),
            "annotator": self.annotator,
            "shard": None if self.shard is None else self.shard.label,
            "total": total,
            "labelled": counts["labelled"],
            "skipped": counts["skipped"],
            "none": counts["none"],
            "flagged": counts["flagged"],
            "pending": counts["pending"],
            "rate_per_minute": rate,
            "eta_seconds": left / rate * 60.0 if rate else None,
            "histogram": [{"name": n, "count": self.states.class_counts[n]} for n in names],
            "has_maps": self.items.has_maps,
            "views": self.items.view_choices(),
            "min_view_ms": self.min_view_ms,
            "next_steps": self.next_steps,
            "display": self.display,
            "undo": None if newest is None else f"{newest.image_id}: {_describe(newest)}",
            "trail": None if self.trail is None else {
                "kind": self.trail.kind, "label": self.trail.label, "position": self.trail.position,
                "length": len(self.trail.indices),
            },
            "history": [self._summary(i) for i in self.states.history(self.history_size)],
            "current": None if self.cursor is None else self._current(self.cursor),
        }  # fmt: skip
        if notice:
            state["notice"] = notice
        return state

    def _summary(self, i: int) -> dict[str, Any]:
        row = self.top(i)
        return {"index": i, "id": self.items.ids[i], "status": self.status(i), "class": row.class_name,
                "note": row.note, "thumb": f"/thumb/{i}.png"}  # fmt: skip

    def _current(self, i: int) -> dict[str, Any]:
        image_id = self.items.ids[i]
        row = self.top(i)
        upcoming = self._upcoming(i)
        current: dict[str, Any] = {
            "index": i,
            "id": image_id,
            "status": self.status(i),
            "answer": row.class_name if row is not None and row.has_class else None,
            "note": row.note if row is not None and row.kind == RowKind.FLAG else None,
            "problem": self.known_problem(i),
            "batches": candidate_batches(candidate_order(image_id, self.items.class_names, self.order_seed)),
            "image": f"/image/{i}.png",
            "prefetch": None if upcoming is None else f"/image/{upcoming}.png",
        }
        if self.items.has_maps:
            current["map"] = f"/map/{i}.png"
            names, colours = self.items.class_names, self.items.class_colours
            try:
                present = self.items.map_classes(i)
            except (KeyError, DataFormatError) as exc:
                # The answer is already on disk: one unreadable map must not take the page down.
                # The map view itself (/map/<i>.png) answers with the error naming the image.
                log.warning("reference map of %s cannot be read (%s): no legend", image_id, exc)
                present = []
            current["map_legend"] = [
                {"name": names[c], "colour": _hex(colours[c])}
                if c >= 0
                else {"name": "no class of the nomenclature", "colour": _hex(UNLABELLED_COLOUR)}
                for c in present
            ]
        return current

    def _upcoming(self, i: int) -> int | None:
        """The image shown after answering image ``i`` (for the page to fetch in advance)."""
        trail = self.trail
        if trail is not None and trail.position + 1 < len(trail.indices):
            return trail.indices[trail.position + 1]
        n = len(self.items)
        for k in range(1, n):
            j = (i + k) % n
            if self.status(j) == "pending":
                return j
        return None


def _describe(row: Answer) -> str:
    return f"{row.kind} {row.class_name}" if row.kind in CLASS_KINDS else row.kind


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _seconds(value: Any) -> float:
    """A request's seconds as a float; a number JSON can hold but a float cannot (a 400-digit
    integer) is refused like any other bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"seconds must be a number >= 0, got {value!r}")
    try:
        spent = float(value)
    except OverflowError:
        raise BadRequest("seconds must be a number >= 0 of reasonable size") from None
    if not math.isfinite(spent) or spent < 0 or spent > 1e9:
        raise BadRequest(f"seconds must be a number >= 0, got {spent!r}")
    return spent
