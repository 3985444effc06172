"""AdaGC's early-learning indicator and the test for the end of early learning (RECONSTRUCTION).

Pure functions of the indicator curve (one value per finished epoch), used by the dual-EMA store
(which records the predictions the indicator is computed from) and the stage switch (which
decides on the curve). See :mod:`splml.methods.adagc.loss` for the method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from splml.metrics import average_precision_per_class

# -- the early-learning indicator and the curve it draws ------------------------------------------


def early_learning_indicator(probs: Tensor, annotated: Tensor) -> float:
    """Macro AP (percent) of the predictions against the *observed* labels ``z``.

    Unknown entries count as negatives, exactly as AN trains them. Why this measure (and not,
    say, the mean probability on the observed positives): it follows both halves of the
    memorisation story. While the network learns the clean signal it ranks the annotated
    positive of each class above the other images, so the AP rises fast; then it plateaus; and
    when the network starts memorising the false negatives it pushes the *hidden* positives
    (labelled 0 in ``z``) below everything, which raises the AP against ``z`` again. A
    probability averaged over the positives alone would not see the second rise, and an accuracy
    at 0.5 is dominated by the mass of negatives. AP is threshold-free and ranking-based, so
    calibration drift of the teacher does not move it. Classes without an observed positive
    among the rows are left out (their AP is undefined). Returns NaN when no class is left.
    """
    if probs.numel() == 0:
        return float("nan")
    ap = average_precision_per_class(probs.double().cpu().numpy(), annotated.cpu().numpy().astype(np.float64))
    valid = ap[~np.isnan(ap)]
    return float(100.0 * valid.mean()) if valid.size else float("nan")


def saturating_curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a (1 - exp(-b x^c))``: the early-learning model of the indicator."""
    return a * (1.0 - np.exp(-b * np.power(x, c)))


def saturating_slope(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Derivative of :func:`saturating_curve` with respect to ``x``."""
    return a * b * c * np.power(x, c - 1.0) * np.exp(-b * np.power(x, c))


def fit_saturating_curve(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares ``(a, b, c)`` of :func:`saturating_curve`, or None when no fit converges.

    Robustness measures, because the fit runs on a handful of noisy points: ``y`` is scaled to
    max |y| = 1 (the indicator is in percent), the parameters are bounded (``a`` in (0, 10] in
    scaled units, ``b`` in (0, 20], ``c`` in [0.2, 5]), several starting points are tried and
    the one with the smallest residual wins, and convergence failures or non-finite results are
    skipped. ``x`` must be positive (epochs are counted from 1).
    """
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if y.size < 3 or not math.isfinite(scale) or scale <= 0:
        return None
    from scipy.optimize import OptimizeWarning, curve_fit

    yn = y / scale
    lower, upper = np.array([1e-6, 1e-6, 0.2]), np.array([10.0, 20.0, 5.0])
    a0 = float(np.clip(np.max(yn), 1e-3, 10.0))
    best: tuple[float, np.ndarray] | None = None
    for b0 in (0.1, 0.5, 2.0):
        for c0 in (0.5, 1.0, 2.0):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    params, _ = curve_fit(saturating_curve, x, yn, p0=[a0, b0, c0], bounds=(lower, upper), maxfev=1000)
            except (RuntimeError, ValueError, FloatingPointError):
                continue
            residual = float(np.sum((saturating_curve(x, *params) - yn) ** 2))
            if np.all(np.isfinite(params)) and math.isfinite(residual) and (best is None or residual < best[0]):
                best = (residual, params)
    if best is None:
        return None
    a, b, c = best[1]
    return float(a * scale), float(b), float(c)


def _window_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` over ``x``."""
    xc = x - x.mean()
    return float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))


def early_learning_has_ended(curve: Sequence[float], window: int, horizon: int | None = None) -> bool:
    """Whether the indicator values of epochs ``0..n-1`` show the end of early learning.

    1. Fit :func:`saturating_curve` to the finite points (epoch ``e`` at ``x = e + 1``); if no
       fit converges, fall back to the raw finite-difference slopes.
    2. The fitted *mean* slope is the average of ``f'`` over the warm-up horizon ``[1, H]``,
       ``(f(H) - f(1)) / (H - 1)`` with ``H = horizon`` (the caller passes ``max_warmup``; at
       least the observed span). The knee is the first observed epoch, at or after the steepest
       fitted slope, where the fitted slope falls below that mean (starting from the steepest
       point matters for ``c > 1``, where the curve starts slowly). Why the horizon and not the
       observed prefix: on a prefix of *any* concave rising curve the slope of the later half is
       below the prefix's mean slope, so a prefix mean would fire after a fixed number of epochs
       whatever the curve; over a fixed horizon the knee moves with the fitted rate ``b``.
    3. Confirmation on the raw curve (a fit on a few noisy points can be fooled): the last
       ``window`` epochs must all lie at or after the knee, and their least-squares slope must
       also be below the mean slope of step 2 (without a fit: the raw mean slope).

    A curve that does not rise overall (mean slope <= 0) never ends early learning: the caller's
    ``max_warmup`` forces the switch then.
    """
    y_all = np.asarray(curve, dtype=np.float64)
    x_all = np.arange(1, y_all.size + 1, dtype=np.float64)
    finite = np.isfinite(y_all)
    x, y = x_all[finite], y_all[finite]
    if y.size < max(4, window + 1):  # 3 parameters need more than 3 points to say anything
        return False
    end = max(float(horizon or 0), float(x[-1]))
    params = fit_saturating_curve(x, y)
    if params is not None:
        slopes = saturating_slope(x, *params)
        ends = saturating_curve(np.array([1.0, end]), *params)
        mean_slope = float(ends[1] - ends[0]) / (end - 1.0)
    else:
        slopes = np.gradient(y, x)
        mean_slope = float(y[-1] - y[0]) / float(x[-1] - x[0])
    if not np.all(np.isfinite(slopes)) or not mean_slope > 0:
        return False
    peak = int(np.argmax(slopes))
    below = np.flatnonzero(slopes[peak:] < mean_slope)
    if below.size == 0:
        return False
    knee = peak + int(below[0])
    if y.size - window < knee:
        return False
    return _window_slope(x[-window:], y[-window:]) < mean_slope
