"""Allowed values of a structured-config field, declared beside its type and default.

``batch_size: int = at_least(1, default=32)`` is a dataclass field whose metadata carries a
:class:`Constraint`; :func:`splml.schema.validate_config` reads it and refuses a value outside,
naming the key. Types are Hydra's business (it refuses ``optim.lr=fast`` while composing);
these say which values of the right type can work.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Constraint:
    """A number in ``[minimum, maximum]`` (ends open where ``strict``/``strict_max``), or one of ``choices``."""

    minimum: float | None = None
    strict: bool = False
    maximum: float | None = None
    strict_max: bool = False
    choices: tuple[Any, ...] | None = None
    #: Values accepted besides the range (a sentinel such as ``-1`` for "no limit").
    allow: tuple[Any, ...] = ()
    optional: bool = False
    #: What the value is, for the message.
    meaning: str = ""

    def problem(self, value: Any, *, integer: bool = False) -> str | None:
        """Why ``value`` is refused, or None when it is allowed (``integer``: say "an integer" in the message)."""
        if value is None:
            return (
                None
                if self.optional or (self.choices is not None and None in self.choices)
                else self._say("is required")
            )
        if self.choices is not None:
            if any(value == c and type(value) is type(c) for c in self.choices if c is not None) or (
                isinstance(value, str) and value in self.choices
            ):
                return None
            return self._say(f"must be one of {[c for c in self.choices]}")
        if value in self.allow and not isinstance(value, bool):
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return self._say(f"must be a number ({self._range()})")
        if math.isnan(value):
            return self._say(f"must be a number ({self._range()}), not NaN")
        low_ok = self.minimum is None or (value > self.minimum if self.strict else value >= self.minimum)
        high_ok = self.maximum is None or (value < self.maximum if self.strict_max else value <= self.maximum)
        return None if low_ok and high_ok else self._say(f"must be {'an integer ' if integer else ''}{self._range()}")

    def _range(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.strict else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.strict_max else '<='} {self.maximum:g}")
        allowed = " or ".join(str(a) for a in self.allow)
        text = " and ".join(parts) or "any number"
        return f"{text} (or {allowed})" if allowed else text

    def _say(self, what: str) -> str:
        return f"{self.meaning} {what}" if self.meaning else what


def _field(default: Any, constraint: Constraint) -> Any:
    return field(default=default, metadata={"constraint": constraint})


def at_least(minimum: float, *, default: Any, meaning: str = "") -> Any:
    """A number >= ``minimum``."""
    return _field(default, Constraint(minimum=minimum, meaning=meaning))


def greater_than(minimum: float, *, default: Any, below: float | None = None, meaning: str = "") -> Any:
    """A number > ``minimum`` (and < ``below`` when given)."""
    return _field(default, Constraint(minimum=minimum, strict=True, maximum=below, strict_max=True, meaning=meaning))


def between(minimum: float, maximum: float, *, default: Any, meaning: str = "") -> Any:
    """A number in ``[minimum, maximum]``."""
    return _field(default, Constraint(minimum=minimum, maximum=maximum, meaning=meaning))


def optional_at_least(
    minimum: float, *, default: Any, allow: tuple[Any, ...] = (), strict: bool = False, meaning: str = ""
) -> Any:
    """None, or a number >= ``minimum`` (> with ``strict``), or one of ``allow``."""
    return _field(default, Constraint(minimum=minimum, strict=strict, allow=allow, optional=True, meaning=meaning))


def one_of(*choices: Any, default: Any, meaning: str = "") -> Any:
    """One of ``choices`` (compared with their type: ``True`` is not ``1``)."""
    return _field(default, Constraint(choices=tuple(choices), meaning=meaning))
