"""Tests of splml.metrics against scikit-learn (the reference the spec names) and hand examples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from splml import metrics as M
from splml.metrics import MultiLabelMetricAccumulator, average_precision_per_class, compute_metrics


def _random_problem(seed: int, n: int = 200, num_classes: int = 12, decimals: int | None = None):
    """Random probabilities loosely correlated with random labels (every class has a positive)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, num_classes)) < 0.25).astype(np.float64)
    targets[0] = 1.0  # guarantee a positive in every class
    scores = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, num_classes)) + 1.5 * targets - 0.7)))
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, targets


def _sklearn_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(targets[:, j], scores[:, j]) for j in range(scores.shape[1])])


# --------------------------------------------------------------------------- average precision


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal -> heavy ties
def test_ap_per_class_and_micro_match_sklearn(seed: int, decimals: int | None) -> None:
    scores, targets = _random_problem(seed, decimals=decimals)
    ours = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(ours, _sklearn_per_class(scores, targets), rtol=0, atol=1e-12)

    out = compute_metrics(scores, targets)
    np.testing.assert_allclose(out["mAP_macro"], 100 * _sklearn_per_class(scores, targets).mean(), atol=1e-9)
    np.testing.assert_allclose(
        out["mAP_micro"], 100 * average_precision_score(targets, scores, average="micro"), atol=1e-9
    )
    for j in range(scores.shape[1]):
        assert out[f"AP/{j}"] == pytest.approx(100 * ours[j], abs=1e-12)
    assert out["num_classes_without_positives"] == 0
    assert out["num_samples"] == scores.shape[0]


def test_ap_torch_input_agrees() -> None:
    scores, targets = _random_problem(5, n=50, num_classes=9, decimals=2)
    expected = _sklearn_per_class(scores, targets)
    np.testing.assert_allclose(average_precision_per_class(scores, targets), expected, atol=1e-12)
    from_torch = average_precision_per_class(torch.from_numpy(scores).float(), torch.from_numpy(targets).bool())
    np.testing.assert_allclose(from_torch, _sklearn_per_class(scores.astype(np.float32), targets), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_with_heavy_ties_matches_sklearn(seed: int) -> None:
    """Tie groups of every kind: positives tied with negatives at the top, whole columns tied, grids."""
    rng = np.random.default_rng(seed)
    n, num_classes = 300, 10
    targets = (rng.random((n, num_classes)) < 0.2).astype(np.float64)
    targets[:3] = 1.0
    scores = np.round(rng.random((n, num_classes)) * 4 + 2 * targets, 0) / 6  # 7 distinct values per column
    scores[:, 0] = 0.5  # one tie group: AP = prevalence
    scores[:10, 1] = 1.0  # the top group mixes positives and negatives
    scores[targets[:, 2] == 1, 2] = 0.25  # every positive in one group ...
    scores[:20, 2] = 0.25  # ... shared with negatives
    ours = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(ours, _sklearn_per_class(scores, targets), rtol=0, atol=1e-12)
    assert ours[0] == pytest.approx(targets[:, 0].mean(), abs=1e-12)
    out = compute_metrics(scores, targets)
    assert out["mAP_micro"] == pytest.approx(100 * average_precision_score(targets, scores, average="micro"), abs=1e-10)
    for suffix, rows in (("k1", targets.sum(1) == 1), ("k2", targets.sum(1) == 2)):
        sub_t, sub_s = targets[rows], scores[rows]
        keep = sub_t.sum(0) > 0
        expected = _sklearn_per_class(sub_s[:, keep], sub_t[:, keep]).mean()
        assert out[f"mAP_macro_{suffix}"] == pytest.approx(100 * expected, abs=1e-10)


def test_ap_leaves_torch_default_dtype_and_warnings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, targets = _random_problem(4, n=30, num_classes=4)
    targets[:, 1] = 0.0  # no positive: torchmetrics would warn (and score it 0)
    before = torch.get_default_dtype()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ap = average_precision_per_class(scores, targets)
    assert torch.get_default_dtype() == before
    assert math.isnan(ap[1]) and not np.isnan(np.delete(ap, 1)).any()

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("inside torchmetrics")

    monkeypatch.setattr(M, "multilabel_average_precision", failing)
    with pytest.raises(RuntimeError, match="inside torchmetrics"):  # the dtype is restored after an error too
        average_precision_per_class(scores, targets)
    assert torch.get_default_dtype() == before


def test_class_without_positives_is_nan_and_excluded() -> None:
    scores, targets = _random_problem(3)
    targets[:, 4] = 0.0
    ap = average_precision_per_class(scores, targets)
    assert math.isnan(ap[4])
    assert not np.isnan(np.delete(ap, 4)).any()

    out = compute_metrics(scores, targets)
    keep = [j for j in range(scores.shape[1]) if j != 4]
    expected = 100 * _sklearn_per_class(scores[:, keep], targets[:, keep]).mean()
    assert out["mAP_macro"] == pytest.approx(expected, abs=1e-9)
    assert out["num_classes_without_positives"] == 1
    assert math.isnan(out["AP/4"])
    # micro still uses every entry, like sklearn's average="micro"
    assert out["mAP_micro"] == pytest.approx(100 * average_precision_score(targets, scores, average="micro"))


def test_perfect_ranking_and_all_positive_class() -> None:
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=float)
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.2], [0.5, 0.7, 0.6], [0.3, 0.1, 0.4]])
    ap = average_precision_per_class(scores, targets)
    assert ap[0] == pytest.approx(1.0)  # all-positive class: precision is 1 everywhere
    assert ap[0] == pytest.approx(average_precision_score(targets[:, 0], scores[:, 0]))
    assert ap[1] == pytest.approx(1.0)  # positives (0.8, 0.7) above negatives
    assert ap[2] == pytest.approx(1.0)
    out = compute_metrics(scores, targets)
    assert out["mAP_macro"] == pytest.approx(100.0)


def test_ties_enter_together() -> None:
    # One positive tied with two negatives at the top: precision at that threshold is 1/3.
    targets = np.array([[1], [0], [0], [0]], dtype=float)
    scores = np.array([[0.5], [0.5], [0.5], [0.1]])
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(1 / 3)
    assert average_precision_per_class(scores[::-1].copy(), targets[::-1].copy())[0] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- F1


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_f1_matches_sklearn_with_zero_division_one(threshold: float) -> None:
    scores, targets = _random_problem(7, decimals=1)  # ties at the threshold: >= predicts
    targets[:, 2] = 0.0
    scores[:, 2] = 0.0  # no positive, never predicted -> F1 := 1
    targets[:, 3] = 0.0
    scores[:, 3] = 0.95  # no positive, always predicted -> F1 = 0
    preds = (scores >= threshold).astype(int)
    out = compute_metrics(scores, targets, threshold=threshold)
    assert out["F1_macro"] == pytest.approx(100 * f1_score(targets, preds, average="macro", zero_division=1.0))
    assert out["F1_micro"] == pytest.approx(100 * f1_score(targets, preds, average="micro", zero_division=1.0))


def test_f1_empty_problem_is_perfect() -> None:
    out = compute_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert out["F1_macro"] == 100.0
    assert out["F1_micro"] == 100.0
    assert math.isnan(out["mAP_macro"])
    assert out["num_classes_without_positives"] == 2


# --------------------------------------------------------------------------- precision/recall@k


def test_precision_recall_at_k_hand_example() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.2],  # top1 = c0 (T), top3 = c0,c1,c3 -> 1 hit of 2 true (c0, c2)
            [0.1, 0.2, 0.3, 0.4],  # top1 = c3 (F), top3 = c3,c2,c1 -> 2 hits of 2 true (c1, c2)
            [0.5, 0.6, 0.7, 0.8],  # no true label: in precision, not in recall
        ]
    )
    targets = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=float)
    out = compute_metrics(scores, targets, ks=(1, 3, 5))
    assert out["precision@1"] == pytest.approx(100 * (1 + 0 + 0) / 3)
    assert out["recall@1"] == pytest.approx(100 * (1 / 2 + 0) / 2)
    assert out["precision@3"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)
    assert out["recall@3"] == pytest.approx(100 * (1 / 2 + 2 / 2) / 2)
    # k = 5 > L = 4 is capped at 4: every true label is found
    assert out["precision@5"] == pytest.approx(100 * (2 / 4 + 2 / 4 + 0) / 3)
    assert out["recall@5"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- k-split mAP


def test_mAP_split_by_label_count() -> None:
    targets = np.array(
        [
            [1, 0, 0, 0],  # 1 label
            [0, 1, 0, 0],  # 1 label
            [1, 1, 0, 0],  # 2 labels
            [1, 1, 1, 1],  # 4 labels
            [0, 1, 1, 1],  # 3 labels
        ],
        dtype=float,
    )
    scores = np.array(
        [
            [0.9, 0.1, 0.1, 0.1],
            [0.6, 0.7, 0.1, 0.1],
            [0.3, 0.8, 0.2, 0.2],
            [0.5, 0.5, 0.5, 0.5],
            [0.4, 0.4, 0.6, 0.6],
        ]
    )
    out = compute_metrics(scores, targets)
    # k1 (rows 0,1): c0 AP = 1 (0.9 pos > 0.6 neg), c1 AP = 1 (0.7 > 0.1); c2, c3 have no positives
    assert out["mAP_macro_k1"] == pytest.approx(100.0)
    assert out["num_samples_k1"] == 2
    # k2 (row 2 alone): c0 and c1 positive -> AP 1 each
    assert out["mAP_macro_k2"] == pytest.approx(100.0)
    # k3 (row 4 alone) and k4plus (row 3 alone): every positive class of a single image has AP 1
    assert out["mAP_macro_k3"] == pytest.approx(100.0)
    assert out["mAP_macro_k4plus"] == pytest.approx(100.0)

    # A less trivial split and an empty group: drop the 3-label image, mis-rank within k1.
    scores2 = scores.copy()
    scores2[1, 0] = 0.95  # negative of c0 now above the positive at 0.9
    out2 = compute_metrics(scores2[:4], targets[:4])
    sub = [0, 1]
    expected = np.nanmean([average_precision_score(targets[sub, j], scores2[sub, j]) for j in range(2)])
    assert out2["mAP_macro_k1"] == pytest.approx(100 * expected)
    assert math.isnan(out2["mAP_macro_k3"])
    assert out2["num_samples_k3"] == 0


# --------------------------------------------------------------------------- accumulator


def test_accumulator_matches_concatenation_and_dedups() -> None:
    scores, targets = _random_problem(11, n=60, num_classes=5)
    names = [f"c{j}" for j in range(5)]
    expected = compute_metrics(scores, targets, class_names=names)

    acc = MultiLabelMetricAccumulator(num_classes=5, class_names=names)
    probs_t = torch.from_numpy(scores).float()
    targets_t = torch.from_numpy(targets).float()
    # Batches out of order, plus the padding a DistributedSampler adds (indices 0 and 1 repeated).
    perm = torch.from_numpy(np.random.default_rng(0).permutation(60))
    for chunk in perm.split(17):
        acc.update(probs_t[chunk], targets_t[chunk], chunk)
    pad = torch.tensor([0, 1, 0])
    acc.update(probs_t[pad], targets_t[pad], pad)

    got = acc.compute()
    assert got.keys() == expected.keys()
    assert got["num_samples"] == 60
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            # float32 storage can only change scores below 1e-7 relative; no ties created here
            assert got[key] == pytest.approx(value, abs=1e-4), key
    assert "AP/c0" in got

    acc.reset()
    with warnings.catch_warnings(), pytest.raises(ValueError, match="before any update"):
        warnings.simplefilter("ignore")  # torchmetrics' own "compute before update" warning
        acc.compute()
    acc.update(probs_t[:10], targets_t[:10], torch.arange(10))
    assert acc.compute()["num_samples"] == 10


def test_accumulator_rejects_conflicting_duplicates_and_bad_shapes() -> None:
    acc = MultiLabelMetricAccumulator(num_classes=3)
    with pytest.raises(ValueError):
        acc.update(torch.rand(4, 2), torch.zeros(4, 2), torch.arange(4))
    with pytest.raises(ValueError):
        acc.update(torch.rand(4, 3), torch.zeros(4, 3), torch.arange(3))
    acc.update(torch.rand(2, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0]]), torch.tensor([0, 1]))
    acc.update(torch.rand(1, 3), torch.tensor([[0.0, 0, 1]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="different targets"):
        acc.compute()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (np.random.rand(4, 3), np.zeros((4, 2)), "same shape"),
        (np.random.rand(4), np.zeros(4), "2-D"),
        (np.random.rand(2, 3, 1), np.zeros((2, 3, 1)), "2-D"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), np.zeros((2, 2)), "non-finite"),
        (np.array([[0.1, np.inf], [0.2, 0.3]]), np.zeros((2, 2)), "non-finite"),
        (np.array([[0.1, 0.2], [0.2, 0.3]]), np.array([[1.0, -1.0], [0.0, 1.0]]), "binary"),
        (np.array([[0.1, 2.5], [0.2, 0.3]]), np.zeros((2, 2)), "probabilities"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "at least one"),
    ],
)
def test_invalid_inputs_raise(scores: np.ndarray, targets: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(scores, targets)


def test_invalid_class_names_and_ks() -> None:
    scores, targets = _random_problem(0, n=10, num_classes=3)
    with pytest.raises(ValueError, match="class_names"):
        compute_metrics(scores, targets, class_names=["a", "b"])
    with pytest.raises(ValueError, match="ks"):
        compute_metrics(scores, targets, ks=(0,))
    with pytest.raises(ValueError, match="non-finite"):
        average_precision_per_class(np.array([[np.nan]]), np.array([[1.0]]))
