"""AdaGC's default trigger: the end of the transition stage, detected as in AIO2 (pure functions).

AdaGC's summary names an "early-learning detection indicator" but not its rule. Its first
author's earlier method for incomplete labels, AIO2 (Liu, Albrecht, Wang, Li, Zhu, IEEE TGRS 62,
2024; public code ``zhu-xlab/AIO2``, ``utils/early_learning_detection.py``), publishes one, the
"adaptive correction trigger". This module rewrites it from its description (facts in
``specs/methods.md``, AdaGC, items 2-3); the tests compare it with a step-by-step online
re-implementation on fixed curves.

The curve ``y`` holds one value per finished epoch (epoch ``e``, 0-based, at ``x = e + 1``),
rising fast while the clean signal is learnt, flat in the transition stage, rising again when
the false negatives are memorised. After every epoch ``n`` (``n`` values known):

1. For each window size ``ws``: the slope of a line fitted to the last ``ws`` values (slope
   bounded below by 0) is appended to that window's slopes. When the smallest stored slope is
   below the current one (the slope has passed its minimum), the window votes for the end of
   the transition at ``ind = argmin(slopes) + ws`` (epochs), provided the minimum is far enough
   behind: ``n - ind > mean(window sizes)``. A later vote replaces an earlier one.
2. Once every window has voted: ``dep = int(mean(votes))``; ``a (1 - exp(-b x^c))`` is fitted to
   the first ``dep`` values (``p0 = (1, 0.5, 0.5)``, ``a`` in [0, 1], ``b >= 0``, ``c`` in
   [0, 1]); its mean slope over them is ``thr = (f(dep) - f(1)) / (dep - 1)``, and
   ``mid = #{x in 1..dep : f'(x) > thr}`` is the start of the transition.
3. The trigger is ``int((dep + mid) / 2)``: the number of epochs of the state training rolls
   back to (see :mod:`splml.methods.adagc.rollback`), i.e. the first epoch (0-based) trained
   with corrected labels.

Differences from the reference, all deliberate: the bounded line fit is solved in closed form
(least squares, slope clipped at 0 -- the exact solution of the bounded problem, where the
reference runs an iterative solver whose "zero" slopes are only approximately zero), and a
curve fit that does not converge falls back to the raw curve's finite differences (the reference
would stop with an error).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: AIO2's start point and bounds of the fit of ``a (1 - exp(-b x^c))``.
FIT_START = (1.0, 0.5, 0.5)
FIT_BOUNDS = ((0.0, 0.0, 0.0), (1.0, math.inf, 1.0))


def saturating_curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a (1 - exp(-b x^c))``: the model of the curve's early-learning rise."""
    return a * (1.0 - np.exp(-b * np.power(x, c)))


def saturating_slope(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Derivative of :func:`saturating_curve` with respect to ``x``: ``a c b exp(-b x^c) x^(c-1)``."""
    return a * b * c * np.power(x, c - 1.0) * np.exp(-b * np.power(x, c))


def window_slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` at consecutive epochs, bounded below by 0."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    x -= x.mean()
    return max(0.0, float(np.dot(x, y - y.mean()) / np.dot(x, x)))


def fit_early_learning(y: Sequence[float]) -> tuple[float, float, float] | None:
    """``(a, b, c)`` of :func:`saturating_curve` fitted to ``y`` at ``x = 1..len(y)`` (AIO2's start and bounds).

    None when the fit does not converge or gives non-finite values.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    values = np.asarray(y, dtype=np.float64)
    x = np.arange(1, values.size + 1, dtype=np.float64)
    try:
        with warnings.catch_warnings():
            # Two or three points leave the covariance undefined; only the parameters are used.
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(saturating_curve, x, values, p0=FIT_START, method="trf", bounds=FIT_BOUNDS)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    a, b, c = (float(v) for v in params)
    return a, b, c


@dataclass(frozen=True)
class TransitionDetection:
    """What the rule found once every window voted (the values the run logs and draws)."""

    #: Epochs of the curve known when the rule fired (the decision comes before epoch ``detected_at``).
    detected_at: int
    #: Window size -> its vote for the end of the transition (epochs).
    votes: dict[int, int]
    #: End of the transition: ``int(mean(votes))``.
    dep: int
    #: Start of the transition: epochs where the fitted slope exceeds the fit's mean slope.
    mid: int
    #: ``int((dep + mid) / 2)``: training rolls back to the state after this many epochs.
    trigger: int
    #: ``(a, b, c)`` of the fit to the first ``dep`` values; None when it fell back to the raw curve.
    fit: tuple[float, float, float] | None
    #: The mean slope ``thr`` that ``mid`` is measured against.
    mean_slope: float
    #: Per window size, the slope of every window so far (for the figure).
    slopes: dict[int, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "detected_at": self.detected_at, "votes": dict(self.votes), "dep": self.dep, "mid": self.mid,
            "trigger": self.trigger, "fit": None if self.fit is None else list(self.fit),
            "mean_slope": self.mean_slope, "slopes": {k: list(v) for k, v in self.slopes.items()},
        }  # fmt: skip


def check_window_sizes(window_sizes: Sequence[int]) -> tuple[int, ...]:
    """The window sizes as a tuple; ValueError for an empty list or a window under 2 epochs."""
    sizes = tuple(int(w) for w in window_sizes)
    if not sizes:
        raise ValueError("AdaGC's transition detection needs at least one window size")
    if min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise ValueError(f"AdaGC window sizes must be distinct and >= 2 epochs (a line needs 2 points), got {sizes}")
    return sizes


def transition_start(y: Sequence[float]) -> tuple[int, float, tuple[float, float, float] | None]:
    """``(mid, thr, fit)`` of the first ``dep = len(y)`` values (step 2 of the rule)."""
    values = np.asarray(y, dtype=np.float64)
    x = np.arange(1, values.size + 1, dtype=np.float64)
    fit = fit_early_learning(values)
    if fit is not None:
        fitted = saturating_curve(x, *fit)
        thr = float(fitted[-1] - fitted[0]) / float(x[-1] - x[0])
        return int(np.sum(saturating_slope(x, *fit) > thr)), thr, fit
    thr = float(values[-1] - values[0]) / float(x[-1] - x[0])
    return int(np.sum(np.gradient(values, x) > thr)), thr, None


def detect_transition(curve: Sequence[float], window_sizes: Sequence[int]) -> TransitionDetection | None:
    """Replay the online rule over ``curve``; the detection at the first epoch it fires, else None.

    Pure function of the curve: a run calling it after every epoch with the curve so far fires
    at the same epoch, with the same values, as one calling it on the whole recorded curve, so
    nothing of the rule's state has to be checkpointed beyond the curve itself.
    """
    sizes = check_window_sizes(window_sizes)
    values = [float(v) for v in curve]
    if not all(math.isfinite(v) for v in values):
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise ValueError(f"AdaGC's monitored curve is not finite at epoch {bad} ({values[bad]})")
    buffer = float(np.mean(sizes))
    slopes: dict[int, list[float]] = {ws: [] for ws in sizes}
    votes: dict[int, int] = {}
    for n in range(1, len(values) + 1):
        for ws in sizes:
            if n < ws:
                continue
            slope = window_slope(values[n - ws : n])
            slopes[ws].append(slope)
            if min(slopes[ws]) < slope:
                ind = int(np.argmin(slopes[ws])) + ws
                if n - ind > buffer:
                    votes[ws] = ind
        if len(votes) == len(sizes):
            dep = int(np.mean([votes[ws] for ws in sizes]))
            mid, thr, fit = transition_start(values[:dep])
            return TransitionDetection(
                detected_at=n, votes=dict(votes), dep=dep, mid=mid, trigger=int((dep + mid) / 2), fit=fit,
                mean_slope=thr, slopes={ws: list(s) for ws, s in slopes.items()},
            )  # fmt: skip
    return None


def window_slopes(curve: Sequence[float], window_sizes: Sequence[int]) -> dict[int, list[float]]:
    """Per window size, the slope of each window ending at epochs ``ws..len(curve)`` (for the figure)."""
    values = [float(v) for v in curve]
    return {
        ws: [window_slope(values[n - ws : n]) for n in range(ws, len(values) + 1)]
        for ws in check_window_sizes(window_sizes)
    }
