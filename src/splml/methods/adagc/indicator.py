"""AdaGC's monitored curve and the earlier knee rule (RECONSTRUCTION).

The curve is one value per finished epoch, computed from the predictions the dual-EMA store
recorded during the epoch (the per-iteration teacher's, right after each of its updates) against
the *observed* labels ``z`` (unknown entries count as negatives, exactly as AN trains them):

* ``jaccard`` (the default, :func:`observed_jaccard`): micro Jaccard index (IoU) of the
  predictions thresholded at 0.5 against ``z``, in [0, 1]. AIO2 monitors the teacher's IoU of
  the predicted masks against the noisy masks, pixel by pixel; the multi-label analogue counts
  label entries instead of pixels. It follows the three stages the rule looks for: while the clean
  signal is learnt the observed positives cross 0.5 (IoU up fast); in the transition the teacher
  also predicts the hidden positives, which count as false positives against ``z`` (IoU flat);
  when the false negatives are memorised those predictions fall below 0.5 again (IoU up again).
  It is thresholded at the same 0.5 the corrections use, so it tracks exactly the decision the
  corrections will make, and its range [0, 1] is the one the fit's bound ``a <= 1`` assumes.
* ``map`` (:func:`early_learning_indicator`, the earlier choice, kept for the ``knee`` variant):
  macro AP against ``z``, as a fraction in [0, 1]; threshold-free and ranking-based.

:func:`early_learning_has_ended` is the earlier trigger rule (``trigger: knee``): a saturating fit
with a knee test and a window check, bounded by ``min_warmup``/``max_warmup``, no rollback.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from splml.methods.adagc.detection import saturating_curve, saturating_slope
from splml.metrics import average_precision_per_class

# -- the monitored curve --------------------------------------------------------------------------


def observed_jaccard(probs: Tensor, annotated: Tensor) -> float:
    """Micro Jaccard index (IoU) of ``probs > 0.5`` against the observed positives ``annotated``.

    ``TP / (TP + FP + FN)`` over every entry of the rows (torchmetrics' micro multilabel Jaccard
    index). NaN without rows, or when nothing is predicted and nothing annotated.
    """
    from torchmetrics.functional.classification import multilabel_jaccard_index

    if probs.numel() == 0 or not bool((probs > 0.5).any() | annotated.bool().any()):
        return float("nan")
    value = multilabel_jaccard_index(
        probs.float(), annotated.long(), num_labels=probs.shape[1], threshold=0.5, average="micro"
    )
    return float(value)


def early_learning_indicator(probs: Tensor, annotated: Tensor) -> float:
    """Macro AP (fraction in [0, 1]) of the predictions against the observed labels ``z``.

    Classes without an observed positive among the rows are left out (their AP is undefined).
    Returns NaN when no class is left.
    """
    if probs.numel() == 0:
        return float("nan")
    ap = average_precision_per_class(probs.double().cpu().numpy(), annotated.cpu().numpy().astype(np.float64))
    valid = ap[~np.isnan(ap)]
    return float(valid.mean()) if valid.size else float("nan")


#: ``curve:`` option -> the score of one epoch's predictions against the observed labels.
CURVE_SCORES: dict[str, Callable[[Tensor, Tensor], float]] = {
    "jaccard": observed_jaccard,
    "map": early_learning_indicator,
}


# -- the earlier knee rule (trigger: knee) ---------------------------------------------------------


def fit_saturating_curve(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares ``(a, b, c)`` of :func:`saturating_curve`, or None when no fit converges.

    Robustness measures, because the fit runs on a handful of noisy points: ``y`` is scaled to
    max |y| = 1 (so the rule does not depend on the curve's unit), the parameters are bounded (``a`` in (0, 10] in
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
