"""AdaGC's transition detection (AIO2's rule) and the monitored curve, on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splml.methods.adagc import detection
from splml.methods.adagc.detection import (
    detect_transition,
    fit_early_learning,
    saturating_curve,
    saturating_slope,
    transition_start,
    window_slope,
)
from splml.methods.adagc.indicator import early_learning_indicator, observed_jaccard


def three_stage_curve(epochs: int = 20, rate: float = 0.7, second_rise: int = 10, noise: float = 0.0, seed: int = 0):
    """Fast rise (early learning), plateau (transition), second rise (memorisation), in [0, 1]."""
    e = np.arange(epochs, dtype=np.float64)
    y = 0.5 * (1 - np.exp(-rate * (e + 1))) + 0.025 * np.clip(e - second_rise, 0, None)
    return y + noise * np.random.default_rng(seed).standard_normal(epochs)


class OnlineReference:
    """The published rule, one epoch at a time, as its description states it (written for this test).

    Kept deliberately literal: a dict of slope lists per window, an array of detected end points
    (0 = none), the line fit with its slope bounded below by 0 (scipy's bounded linear least
    squares, an exact solver: an iterative one returns "zero" slopes of 1e-6 that the rule's
    ``min < current`` comparison then treats as rises) and the bounded curve fit (curve_fit).
    """

    def __init__(self, window_sizes):
        self.window_sizes = list(window_sizes)
        self.slopes = {ws: [] for ws in self.window_sizes}
        self.ends = np.zeros(len(self.window_sizes))

    def step(self, data):
        from scipy.optimize import curve_fit, lsq_linear

        n = len(data)
        for i, ws in enumerate(self.window_sizes):
            if n >= ws:
                x0, y0 = np.arange(n - ws + 1, n + 1), np.array(data[n - ws : n])
                design = np.stack([x0, np.ones_like(x0)], axis=1).astype(np.float64)
                a = float(lsq_linear(design, y0, bounds=([0, -np.inf], [np.inf, np.inf]), method="bvls").x[0])
                self.slopes[ws].append(a)
                if min(self.slopes[ws]) < a:
                    ind = np.argmin(self.slopes[ws]) + ws
                    if n - ind > np.mean(self.window_sizes):
                        self.ends[i] = ind
        if (self.ends > 0).sum() < len(self.window_sizes):
            return None
        dep = int(np.mean(self.ends))
        x0, y0 = np.arange(dep) + 1, np.array(data[:dep])
        (a, b, c), _ = curve_fit(lambda x, a, b, c: a * (1 - np.exp(-b * x**c)), x0, y0, p0=(1, 0.5, 0.5),
                                 method="trf", bounds=([0, 0, 0], [1, np.inf, 1]))  # fmt: skip
        yh = a * (1 - np.exp(-b * x0**c))
        thr = (yh[-1] - yh[0]) / (x0[-1] - x0[0])
        mid = int(np.sum(a * c * b * np.exp(-b * x0**c) * x0 ** (c - 1) > thr))
        return {"detected_at": n, "dep": dep, "mid": mid, "trigger": int((dep + mid) / 2), "fit": (a, b, c),
                "votes": dict(zip(self.window_sizes, self.ends.astype(int).tolist(), strict=True))}  # fmt: skip


def reference(curve, window_sizes):
    rule = OnlineReference(window_sizes)
    for n in range(1, len(curve) + 1):
        found = rule.step(list(curve[:n]))
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("window_sizes", "noise", "seed", "rate"),
    [
        ((2, 3, 4), 0.0, 0, 0.7),
        ((2, 3, 4), 0.01, 1, 0.7),
        ((3, 5), 0.01, 2, 0.4),
        ((2, 3), 0.02, 3, 1.2),
        ((2, 4, 6), 0.005, 4, 0.5),
    ],
)
def test_detection_equals_the_online_reference(window_sizes, noise, seed, rate):
    curve = three_stage_curve(noise=noise, seed=seed, rate=rate)
    ours, theirs = detect_transition(curve, window_sizes), reference(curve, window_sizes)
    assert ours is not None and theirs is not None
    assert (ours.detected_at, ours.dep, ours.mid, ours.trigger) == (
        theirs["detected_at"], theirs["dep"], theirs["mid"], theirs["trigger"]
    )  # fmt: skip
    assert ours.votes == theirs["votes"]
    np.testing.assert_allclose(ours.fit, theirs["fit"], rtol=1e-4, atol=1e-6)


def test_trigger_lies_in_the_transition_and_the_rule_is_online():
    curve = three_stage_curve()
    found = detect_transition(curve, (2, 3, 4))
    assert found is not None
    # The plateau: after the fast rise (~4 epochs at rate 0.7), up to the second rise (after 11 epochs).
    assert 2 <= found.mid <= found.trigger <= found.dep <= 11 < found.detected_at
    assert found.detected_at - max(found.votes.values()) > np.mean((2, 3, 4))
    # Online: nothing fires on the prefixes before, the same detection on the prefix up to it.
    assert detect_transition(curve[: found.detected_at - 1], (2, 3, 4)) is None
    assert detect_transition(curve[: found.detected_at], (2, 3, 4)) == found
    # A curve that only saturates (slopes only fall) never shows the end of the transition.
    assert detect_transition(0.6 * (1 - np.exp(-0.5 * np.arange(1, 30))), (2, 3, 4)) is None


def test_window_slope_is_the_bounded_least_squares_slope():
    assert window_slope([0.1, 0.3, 0.5]) == pytest.approx(0.2)
    assert window_slope([0.1, 0.4, 0.4]) == pytest.approx(0.15)
    assert window_slope([0.5, 0.3, 0.1]) == 0.0, "a falling window has slope 0 (bounded below)"


def test_fit_start_point_and_bounds_and_the_fallback(monkeypatch):
    x = np.arange(1, 9, dtype=np.float64)
    y = saturating_curve(x, 0.8, 0.4, 0.9)
    a, b, c = fit_early_learning(y)
    assert (a, b, c) == pytest.approx((0.8, 0.4, 0.9), rel=1e-3)
    # Bounded: a curve above 1 still gets a <= 1 and c <= 1.
    a, _, c = fit_early_learning(2 * y)
    assert a <= 1.0 and 0.0 <= c <= 1.0
    # mid counts the epochs whose fitted slope exceeds the fit's mean slope over 1..dep.
    mid, thr, fit = transition_start(y)
    fitted = saturating_curve(x, *fit)
    assert thr == pytest.approx((fitted[-1] - fitted[0]) / 7)
    assert mid == int(np.sum(saturating_slope(x, *fit) > thr))
    # Without a converged fit, the raw curve's finite differences take its place.
    monkeypatch.setattr(detection, "fit_early_learning", lambda values: None)
    mid, thr, fit = transition_start(y)
    assert fit is None and thr == pytest.approx((y[-1] - y[0]) / 7)
    assert mid == int(np.sum(np.gradient(y, x) > thr))


def test_bad_windows_and_curves_are_refused():
    with pytest.raises(ValueError, match=">= 2"):
        detect_transition([0.1, 0.2, 0.3], (1, 3))
    with pytest.raises(ValueError, match="distinct"):
        detect_transition([0.1, 0.2, 0.3], (2, 2))
    with pytest.raises(ValueError, match="at least one window"):
        detect_transition([0.1, 0.2, 0.3], ())
    with pytest.raises(ValueError, match="epoch 2"):
        detect_transition([0.1, 0.2, math.nan, 0.3], (2,))


def test_curve_scores_by_hand():
    annotated = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    probs = torch.tensor([[0.9, 0.6, 0.1], [0.2, 0.7, 0.4], [0.3, 0.2, 0.4], [0.8, 0.1, 0.55]])
    # Predicted above 0.5: (0,0) TP, (0,1) FP, (1,1) TP, (3,0) TP, (3,2) FP; (2,2) FN -> 3 / (3 + 2 + 1)
    assert observed_jaccard(probs, annotated) == pytest.approx(0.5)
    assert math.isnan(observed_jaccard(probs[:0], annotated[:0]))
    # Macro AP as a fraction: class 0: positives ranked 1st and 2nd -> 1; class 1: 1st -> 1;
    # class 2: ranked 3rd of 4 (0.55, 0.4, 0.4 tie with a negative, 0.1) -> torchmetrics' value.
    ap = early_learning_indicator(probs, annotated)
    assert 0 < ap <= 1
    assert early_learning_indicator(probs[:, :2], annotated[:, :2]) == pytest.approx(1.0)
