"""Per-class thresholds chosen for the best F1 on labelled data."""

from __future__ import annotations

import numpy as np

from splml.thresholds import f1_optimal_thresholds


def brute_force_best_f1(probs: np.ndarray, positive: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(probs):
        predicted = probs >= t
        tp = (predicted & positive).sum()
        best = max(best, 2 * tp / (predicted.sum() + positive.sum()))
    return best


def test_the_threshold_reaches_the_best_f1_of_any_cut():
    rng = np.random.default_rng(0)
    targets = rng.random((200, 6)) < np.array([0.05, 0.2, 0.5, 0.8, 0.3, 0.1])
    probs = np.clip(targets * 0.3 + rng.random((200, 6)) * 0.7, 0, 1).round(2)  # many ties
    thresholds, f1 = f1_optimal_thresholds(probs, targets, default=0.5)
    for c in range(6):
        predicted = probs[:, c] >= thresholds[c]
        achieved = 2 * (predicted & targets[:, c]).sum() / (predicted.sum() + targets[:, c].sum())
        assert achieved == f1[c] == brute_force_best_f1(probs[:, c], targets[:, c])


def test_separable_classes_get_a_threshold_between_the_two_groups_and_empty_classes_the_default():
    probs = np.array([[0.9, 0.2], [0.8, 0.1], [0.3, 0.3], [0.1, 0.4]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds, f1 = f1_optimal_thresholds(probs, targets, default=0.5)
    assert thresholds[0] == 0.55 and f1[0] == 1.0  # midway between 0.8 and 0.3
    assert thresholds[1] == 0.5 and np.isnan(f1[1])  # no positive: nothing to choose on
