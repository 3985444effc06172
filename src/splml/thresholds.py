"""Per-class decision thresholds chosen on labelled data (``splml-predict thresholds=validation``)."""

from __future__ import annotations

import numpy as np


def f1_optimal_thresholds(probs: np.ndarray, targets: np.ndarray, default: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the threshold that maximises F1 of ``prob >= threshold`` on these samples, and that F1.

    For each class the samples are ranked by probability; every cut between two different
    probabilities is a candidate (predicting the top k positive), the best F1 wins (ties: the
    fewest predicted positives), and the threshold is the midpoint of the probabilities on either
    side of the cut (the lowest probability when every sample is predicted positive). A class
    without a positive sample keeps ``default`` and gets F1 NaN. ``probs`` and ``targets`` are N x L.
    """
    probs = np.asarray(probs, dtype=np.float64)
    positive = np.asarray(targets) > 0.5
    if probs.shape != positive.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and targets {positive.shape} must be the same N x L shape")
    thresholds = np.full(probs.shape[1], float(default))
    best_f1 = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        n_pos = int(positive[:, c].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        ranked = probs[order, c]
        true_pos = np.cumsum(positive[order, c])
        k = np.arange(1, len(ranked) + 1)
        f1 = 2.0 * true_pos / (k + n_pos)
        # A cut after position k is possible only where the next probability is lower.
        valid = np.append(ranked[:-1] > ranked[1:], True)
        f1 = np.where(valid, f1, -1.0)
        best = int(np.argmax(f1))  # first maximum: the fewest predicted positives
        best_f1[c] = f1[best]
        thresholds[c] = ranked[best] if best == len(ranked) - 1 else 0.5 * (ranked[best] + ranked[best + 1])
    return thresholds, best_f1
