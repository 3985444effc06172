"""The state of every image, replayed from the rows of an annotation file, with running totals.

An image's state is its newest decision still in force (:func:`splml.io.label_files.replay`):
``pending`` (no row), ``labelled``, ``skipped``, ``none`` (none of these) or ``flagged``. The
totals (per state, per class, the recent answering times) are kept up to date row by row, so
that a request costs the same at the first image as at the 200,000th.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

from splml.io.label_files import DECISION_KINDS, Answer, RowKind

#: Answers the speed (per minute) and time left are estimated from.
RATE_WINDOW = 50
#: What an image's latest row in force makes of it.
STATUS_OF_KIND = {RowKind.ANSWER: "labelled", RowKind.CHANGE: "labelled", RowKind.SKIP: "skipped",
                  RowKind.NONE: "none", RowKind.FLAG: "flagged"}  # fmt: skip


class ImageStates:
    """The states of the images ``ids`` (positions in that list), fed one row at a time by :meth:`apply`."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = tuple(ids)
        self.index = {image_id: i for i, image_id in enumerate(self.ids)}
        self._stacks: dict[str, list[Answer]] = {}
        #: The image of every decision in force, oldest first: what Undo takes back, newest first.
        self.order: list[str] = []
        self.status_counts: Counter[str] = Counter(pending=len(self.ids))
        self.class_counts: Counter[str] = Counter()
        self.recent_seconds: deque[float] = deque(maxlen=RATE_WINDOW)

    def top(self, i: int) -> Answer | None:
        """The row in force for image ``i`` (None: no row)."""
        stack = self._stacks.get(self.ids[i])
        return stack[-1] if stack else None

    def status(self, i: int) -> str:
        row = self.top(i)
        return "pending" if row is None else STATUS_OF_KIND[row.kind]

    def apply(self, row: Answer) -> None:
        """Bring the states, the undo order and the totals up to date with one row of the file."""
        if row.kind not in DECISION_KINDS and row.kind != RowKind.UNDO:
            return
        stack = self._stacks.setdefault(row.image_id, [])
        old = stack[-1] if stack else None
        if row.kind == RowKind.UNDO:
            stack.pop()
            # The undone decision is the image's newest in the order, almost always at its very end.
            last = next(k for k in range(len(self.order) - 1, -1, -1) if self.order[k] == row.image_id)
            del self.order[last]
        else:
            stack.append(row)
            self.order.append(row.image_id)
            if row.kind != RowKind.SKIP:
                self.recent_seconds.append(row.seconds)
        new = stack[-1] if stack else None
        for sign, state in ((-1, old), (1, new)):
            self.status_counts["pending" if state is None else STATUS_OF_KIND[state.kind]] += sign
            if state is not None and state.has_class:
                self.class_counts[state.class_name] += sign

    def newest(self) -> int | None:
        """The image of the newest decision in force (what Undo takes back)."""
        return self.index[self.order[-1]] if self.order else None

    def history(self, limit: int | None = None) -> list[int]:
        """Images by their newest decision in force, newest first (at most ``limit``)."""
        seen: set[str] = set()
        out: list[int] = []
        for image_id in reversed(self.order):
            if image_id not in seen:
                seen.add(image_id)
                out.append(self.index[image_id])
                if limit is not None and len(out) == limit:
                    break
        return out

    def with_class(self, class_name: str) -> list[int]:
        """Images whose answer in force is ``class_name``, in dataset order."""
        return [i for i in range(len(self.ids)) if (row := self.top(i)) is not None and row.has_class
                and row.class_name == class_name]  # fmt: skip

    def rate_per_minute(self) -> float | None:
        recent = self.recent_seconds
        return 60.0 * len(recent) / sum(recent) if recent and sum(recent) > 0 else None
