"""What the annotation page is showing, and what each button does to the annotation file.

One :class:`AnnotationSession` per server. It owns the *cursor* (the image every open tab
shows) and changes it only under its lock, together with the row it writes, so concurrent
requests are applied one at a time. Every request names the image it answers; a request for
any other image than the current one (a second tab that has fallen behind, a double click) is
refused with :class:`Conflict` and changes nothing, and the page reloads the current state.

Queue order: images are visited in dataset order. After an answer or a skip the cursor moves
to the next image (cyclically) that has no row yet; once every image has a row, to the next
skipped one, so skipped images come back at the end. Back moves to the previous image in
dataset order, whatever its state; answering it again appends a row that replaces the earlier
answer (the last row of an image wins). Skip on an image that already has a class keeps that
class and writes nothing. Restarting on the same file resumes at the first image without a row
(or, when there is none, at the first skipped image).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

import numpy as np

from splml.annotate.items import UNLABELLED_COLOUR, AnnotationItems
from splml.io.errors import DataFormatError
from splml.io.label_files import AnnotationLog, Answer

log = logging.getLogger(__name__)

#: Candidate classes shown at once (keys 1-4).
BATCH_SIZE = 4
#: Answers the speed (per minute) and time left are estimated from.
RATE_WINDOW = 50


class BadRequest(ValueError):
    """The request itself is wrong (unknown class, bad number); answered with 400."""


class Conflict(RuntimeError):
    """The request is for another image than the current one; answered with 409."""


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


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_annotator(name: str) -> str:
    name = str(name).strip()
    if not name or len(name) > 100 or any(not ch.isprintable() for ch in name):
        raise ValueError(f"annotator must be 1-100 printable characters, got {name!r}")
    return name


class AnnotationSession:
    """The queue of images over an open :class:`AnnotationLog` (see the module docstring)."""

    def __init__(self, items: AnnotationItems, log: AnnotationLog, annotator: str, *, order_seed: int = 0) -> None:
        self.items = items
        self.log = log
        self.annotator = check_annotator(annotator)
        self.order_seed = int(order_seed)
        self._lock = threading.Lock()
        self._classes = frozenset(items.class_names)
        self.latest: dict[str, Answer] = {}
        # Running totals of the latest answers and the recent answering times, so that a request
        # costs the same at the first image as at the 200,000th.
        self._counts: Counter[str] = Counter()
        self._recent_seconds: deque[float] = deque(maxlen=RATE_WINDOW)
        for answer in log.answers:
            self._remember(answer)
        self.cursor: int | None = self._next_open(None)

    # -- queue -------------------------------------------------------------------------------
    def status(self, i: int) -> str:
        answer = self.latest.get(self.items.ids[i])
        if answer is None:
            return "pending"
        return "skipped" if answer.skipped else "labelled"

    def _next_open(self, after: int | None) -> int | None:
        """The first image after ``after`` (cyclically, ``after`` itself last) without a row,
        else the first skipped one, else None (every image has a class)."""
        n = len(self.items)
        start = -1 if after is None else after
        for wanted in ("pending", "skipped"):
            for i in ((start + k) % n for k in range(1, n + 1)):
                if self.status(i) == wanted:
                    return i
        return None

    def _require_current(self, image_id: Any, *, finished_ok: bool = False) -> None:
        if not (image_id is None or isinstance(image_id, str)):
            raise BadRequest(f"id must be an image id (a string), got {image_id!r}")
        if self.cursor is None and not finished_ok:
            raise Conflict("every image has a class already: there is no current image to answer")
        current = None if self.cursor is None else self.items.ids[self.cursor]
        if image_id != current:
            raise Conflict(
                f"image {image_id!r} is no longer the current image (another tab or a repeated click moved on); "
                "nothing was saved for it, the page now shows the current image"
            )

    # -- actions -----------------------------------------------------------------------------
    def answer(self, image_id: Any, class_name: Any, seconds: Any) -> dict[str, Any]:
        """Record ``class_name`` for the current image and move on."""
        if not isinstance(class_name, str) or class_name not in self._classes:
            raise BadRequest(f"unknown class {class_name!r}: not in the nomenclature of {self.items.description}")
        spent = _seconds(seconds)
        with self._lock:
            self._require_current(image_id)
            self._write(Answer(image_id, class_name, self.annotator, utc_timestamp(), spent))
            self.cursor = self._next_open(self.cursor)
            return self._state()

    def skip(self, image_id: Any, seconds: Any) -> dict[str, Any]:
        """Leave the current image for later (a row with an empty class), or keep its answer."""
        spent = _seconds(seconds)
        with self._lock:
            self._require_current(image_id)
            if self.status(self.cursor) != "labelled":
                self._write(Answer(image_id, "", self.annotator, utc_timestamp(), spent))
            self.cursor = self._next_open(self.cursor)
            return self._state()

    def back(self, image_id: Any) -> dict[str, Any]:
        """Show the previous image in dataset order (from the finished screen: the last one)."""
        with self._lock:
            self._require_current(image_id, finished_ok=True)
            if self.cursor is None:
                self.cursor = len(self.items) - 1
            elif self.cursor == 0:
                return self._state(notice="This is the first image: there is nothing before it.")
            else:
                self.cursor -= 1
            return self._state()

    def _write(self, answer: Answer) -> None:
        self.log.append(answer)  # on disk before the state changes and before the page hears of it
        self._remember(answer)

    def _remember(self, answer: Answer) -> None:
        """``answer`` becomes its image's latest; the totals follow (a skip counts as the empty class)."""
        previous = self.latest.get(answer.image_id)
        if previous is not None:
            self._counts[previous.class_name] -= 1
        self._counts[answer.class_name] += 1
        self.latest[answer.image_id] = answer
        if not answer.skipped:
            self._recent_seconds.append(answer.seconds)

    # -- what the page shows -----------------------------------------------------------------
    def state(self, notice: str | None = None) -> dict[str, Any]:
        with self._lock:
            return self._state(notice)

    def _state(self, notice: str | None = None) -> dict[str, Any]:
        names = self.items.class_names
        counts = {n: self._counts[n] for n in names}
        labelled = sum(counts.values())
        skipped = self._counts[""]
        total = len(self.items)
        recent = self._recent_seconds
        rate = 60.0 * len(recent) / sum(recent) if recent and sum(recent) > 0 else None
        state: dict[str, Any] = {
            "dataset": self.items.description,
            "file": str(self.log.path),
            "annotator": self.annotator,
            "total": total,
            "labelled": labelled,
            "skipped": skipped,
            "pending": total - labelled - skipped,
            "rate_per_minute": rate,
            "eta_seconds": (total - labelled) / rate * 60.0 if rate else None,
            "histogram": [{"name": n, "count": counts[n]} for n in names],
            "has_maps": self.items.has_maps,
            "current": None if self.cursor is None else self._current(self.cursor),
        }
        if notice:
            state["notice"] = notice
        return state

    def _current(self, i: int) -> dict[str, Any]:
        image_id = self.items.ids[i]
        previous = self.latest.get(image_id)
        upcoming = self._upcoming(i)
        current: dict[str, Any] = {
            "index": i,
            "id": image_id,
            "status": self.status(i),
            "answer": previous.class_name if previous is not None and not previous.skipped else None,
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
        n = len(self.items)
        for k in range(1, n):
            j = (i + k) % n
            if self.status(j) == "pending":
                return j
        return None


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadRequest(f"seconds must be a number >= 0, got {value!r}")
    return float(value)
