"""Evaluation metrics for multi-label classification (what every method is judged by).

Every number here is computed on the *full* ground-truth labels of the evaluation split and on
every sample of it exactly once (see :class:`MultiLabelMetricAccumulator`, which undoes the
padding of the ``DistributedSampler``).

Conventions, chosen so that results are comparable with the SPML literature, which reports
scikit-learn's numbers:

* **Average precision** is the non-interpolated AP of
  ``sklearn.metrics.average_precision_score``: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
  *distinct* score thresholds in decreasing order. Tied scores form one threshold, so all
  samples of a tie group enter the ranking together (no optimistic or pessimistic tie
  breaking). torchmetrics' ``multilabel_average_precision`` (exact curve) computes it, in double
  precision (see :func:`average_precision_per_class`).
* A class with **no positive** in the evaluated targets has an undefined AP (recall is 0/0).
  It gets ``NaN`` and is left out of the macro mean; ``num_classes_without_positives`` says how
  many were left out, so a reader can tell a 20-class mean from an 80-class one.
* **F1** predicts a class iff ``probability >= threshold`` and uses ``F1 = 2TP / (2TP + FP + FN)``.
  When ``TP + FP + FN == 0`` (a class with no positive that is never predicted) F1 is defined
  as 1 (100 %): there was nothing to find and nothing was claimed, and punishing a perfect
  classifier for a class that is absent from the split would make splits incomparable. This is
  scikit-learn's ``f1_score(..., zero_division=1.0)``. Every class enters ``F1_macro``.
* **precision@k / recall@k** rank the classes of each sample by score (ties broken towards the
  lower class index, deterministically). ``precision@k = hits / k`` averaged over all samples,
  ``recall@k = hits / (number of true labels)`` averaged over samples with at least one true
  label (for the others it is 0/0). ``k`` larger than the number of classes is capped at it.
* All returned metrics except the counts are **percentages** (0..100).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

ArrayLike = np.ndarray | Tensor

#: Label-count groups of the k-split mAP: (key suffix, min #labels, max #labels or None).
_LABEL_COUNT_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("k1", 1, 1),
    ("k2", 2, 2),
    ("k3", 3, 3),
    ("k4plus", 4, None),
)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Turn a tensor / array-like into a numpy array without keeping autograd or device state."""
    if isinstance(x, Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - only for exotic inputs
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from exc


def _validate(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check the ``N x L`` contract and return ``(float64 scores, float64 0/1 targets)``.

    Errors are raised here, with the offending shape or value, rather than surfacing later as a
    silently wrong metric (a transposed matrix or a NaN score would otherwise still "work").
    """
    s = _to_numpy(scores, "scores")
    t = _to_numpy(targets, "targets")
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N x L), got shape {s.shape}")
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D (N x L), got shape {t.shape}")
    if s.shape != t.shape:
        raise ValueError(f"scores and targets must have the same shape, got {s.shape} and {t.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"need at least one sample and one class, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    if not (np.issubdtype(t.dtype, np.number) or t.dtype == np.bool_):
        raise ValueError(f"targets must be numeric or boolean, got dtype {t.dtype}")
    s = s.astype(np.float64, copy=False)
    t = t.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain {int(np.sum(~np.isfinite(s)))} non-finite value(s) (NaN/inf)")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"targets contain {int(np.sum(~np.isfinite(t)))} non-finite value(s) (NaN/inf)")
    if not np.all((t == 0) | (t == 1)):
        bad = np.unique(t[(t != 0) & (t != 1)])[:5]
        raise ValueError(
            "targets must be binary (0/1 full ground truth); found other values such as "
            f"{bad.tolist()} (unknown/-1 labels cannot be evaluated)"
        )
    return s, t


@contextmanager
def _float64_by_default() -> Iterator[None]:
    """Make float64 torch's default dtype for the duration of a block.

    torchmetrics computes precision and recall by dividing integer counts, and such a division
    yields torch's default dtype: float32 unless changed, which would move AP by up to ~1e-7 from
    scikit-learn's double-precision value (and from archived results). Under float64 the two
    agree to ~1e-16.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _torchmetrics_ap(scores: np.ndarray, targets: np.ndarray, average: str | None) -> np.ndarray:
    """torchmetrics' exact multilabel AP of validated float64 ``N x C`` arrays (``average``: None or "micro")."""
    with _float64_by_default(), warnings.catch_warnings():
        # A class without positives gets our policy below (NaN, left out of the mean) instead of
        # torchmetrics' (recall set to one, AP 0); its warning about that would only mislead.
        warnings.filterwarnings("ignore", message=".*No positive samples found in target.*")
        ap = multilabel_average_precision(
            torch.from_numpy(scores),
            torch.from_numpy(targets).long(),
            num_labels=scores.shape[1],
            average=average,
            thresholds=None,  # the exact curve over every distinct score, as scikit-learn
            validate_args=False,  # _validate has checked shapes and values, with messages naming them
        )
    return np.atleast_1d(ap.numpy()).astype(np.float64)


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Average precision of every class, as ``sklearn.metrics.average_precision_score`` computes it.

    Computed by torchmetrics (``multilabel_average_precision``, ``average=None``) in double
    precision. A class with no positive in ``targets`` has an undefined AP (recall 0/0):
    torchmetrics would report 0 for it, which would drag the macro mean down for a class absent
    from the split, so it is set to ``NaN`` here instead.

    Args:
        scores: ``N x L`` scores (probabilities or logits: AP only uses the ranking), finite.
        targets: ``N x L`` binary ground truth (0/1 or bool).

    Returns:
        ``float64`` array of length ``L`` with AP in ``[0, 1]`` (fractions, not percent), ``NaN``
        for a class without positives; callers taking a macro mean must exclude those
        (``np.nanmean``), which :func:`compute_metrics` does and reports as
        ``num_classes_without_positives``.

    Raises:
        ValueError: on shape mismatch, non-2-D input, non-finite values or non-binary targets.
    """
    s, t = _validate(scores, targets)
    ap = _torchmetrics_ap(s, t, average=None)
    ap[t.sum(axis=0) == 0] = np.nan
    return ap


def micro_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """AP of the flattened ``N*L`` arrays (scikit-learn's ``average="micro"``); NaN without any positive."""
    s, t = _validate(scores, targets)
    if not t.any():
        return float("nan")
    return float(_torchmetrics_ap(s, t, average="micro")[0])


def _nanmean_or_nan(x: np.ndarray) -> float:
    """``np.nanmean`` that returns NaN quietly (no RuntimeWarning) when every entry is NaN."""
    valid = x[~np.isnan(x)]
    return float(valid.mean()) if valid.size else float("nan")


def _f1_scores(preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class and micro F1 (fractions) with ``0/0 := 1`` (see the module docstring for why)."""
    tp = np.sum(preds * targets, axis=0)
    fp = np.sum(preds * (1.0 - targets), axis=0)
    fn = np.sum((1.0 - preds) * targets, axis=0)
    denom = 2.0 * tp + fp + fn
    per_class = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1.0), 1.0)
    micro_denom = denom.sum()
    micro = float(2.0 * tp.sum() / micro_denom) if micro_denom > 0 else 1.0
    return per_class, micro


def _precision_recall_at_k(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Per-sample precision@k and recall@k (percent), averaged over samples.

    One stable sort serves every k: ranks are computed once and ``hits@k`` is a prefix sum.
    """
    num_classes = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    hits_cum = np.cumsum(np.take_along_axis(targets, order, axis=1), axis=1)
    num_true = targets.sum(axis=1)
    has_true = num_true > 0
    out: dict[str, float] = {}
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"ks must contain positive integers, got {k!r}")
        k_eff = min(int(k), num_classes)
        hits = hits_cum[:, k_eff - 1]
        out[f"precision@{k}"] = float(100.0 * np.mean(hits / k_eff))
        out[f"recall@{k}"] = (
            float(100.0 * np.mean(hits[has_true] / num_true[has_true])) if has_true.any() else float("nan")
        )
    return out


def compute_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    threshold: float = 0.5,
    ks: Sequence[int] = (1, 3, 5),
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every evaluation metric of the project on one split, as a flat dict of floats (loggable).

    Args:
        scores: ``N x L`` probabilities (sigmoid already applied), finite and in ``[0, 1]``.
        targets: ``N x L`` binary full ground truth.
        threshold: a class is predicted iff ``probability >= threshold`` (F1 only).
        ks: the ``k`` of precision@k / recall@k.
        class_names: optional names for the per-class keys (``AP/<name>``); indices otherwise.

    Returns:
        Percentages (0..100) unless stated otherwise:

        * ``mAP_macro``: mean per-class AP over classes with at least one positive
          (classes without positives are NaN and excluded, counted in
          ``num_classes_without_positives``).
        * ``mAP_micro``: AP of the flattened ``N*L`` arrays (sklearn ``average="micro"``).
        * ``AP/<name>``: per-class AP (NaN for a class without positives).
        * ``F1_macro``, ``F1_micro``: at ``threshold``; ``0/0 := 100`` (see module docstring).
        * ``precision@k``, ``recall@k`` for each ``k`` in ``ks``.
        * ``mAP_macro_k1``, ``mAP_macro_k2``, ``mAP_macro_k3``, ``mAP_macro_k4plus``: macro mAP
          on the images with exactly 1, 2, 3 or at least 4 true labels (NaN if there is none);
          ``num_samples_k1`` ... ``num_samples_k4plus`` count those images.
        * ``num_classes_without_positives``, ``num_samples`` (counts, as floats).

    Raises:
        ValueError: on bad shapes, non-finite scores, scores outside ``[0, 1]`` (probably logits)
            or non-binary targets; or ``class_names`` of the wrong length.
    """
    s, t = _validate(scores, targets)
    n, num_classes = s.shape
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError(
            f"scores must be probabilities in [0, 1] (got range [{s.min():.4g}, {s.max():.4g}]); "
            "apply sigmoid to logits before evaluating"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries but there are {num_classes} classes")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]

    ap = average_precision_per_class(s, t)
    metrics: dict[str, float] = {
        "mAP_macro": 100.0 * _nanmean_or_nan(ap),
        "mAP_micro": 100.0 * micro_average_precision(s, t),
    }

    f1_per_class, f1_micro = _f1_scores((s >= threshold).astype(np.float64), t)
    metrics["F1_macro"] = 100.0 * float(f1_per_class.mean())
    metrics["F1_micro"] = 100.0 * f1_micro

    metrics.update(_precision_recall_at_k(s, t, ks))

    num_true = t.sum(axis=1)
    for suffix, lo, hi in _LABEL_COUNT_GROUPS:
        mask = num_true >= lo if hi is None else (num_true >= lo) & (num_true <= hi)
        count = int(mask.sum())
        metrics[f"num_samples_{suffix}"] = float(count)
        metrics[f"mAP_macro_{suffix}"] = (
            100.0 * _nanmean_or_nan(average_precision_per_class(s[mask], t[mask])) if count else float("nan")
        )

    metrics["num_classes_without_positives"] = float(np.isnan(ap).sum())
    metrics["num_samples"] = float(n)
    for name, value in zip(names, ap):
        metrics[f"AP/{name}"] = 100.0 * float(value)
    return metrics


def compute_relabelled_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    has_target: ArrayLike,
    original_labels: ArrayLike,
    threshold: float = 0.5,
    ks: Sequence[int] = (1, 3, 5),
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """The metrics of a single-label evaluation set relabelled with multi-label ground truth (ImageNet + ReaL).

    Beyer et al. 2020 ("Are we done with ImageNet?") give the ImageNet validation images sets of
    labels and leave some images out (an empty set); Verelst et al. 2023 (Table 3) score a model
    on both labelings. Here:

    * every key of :func:`compute_metrics`, computed on the images with a known label set
      (``has_target``) only: ``mAP_macro`` is the mAP on ReaL, ``mAP_macro_k1`` ... ``k4plus`` the
      mAP on the images with 1, 2, 3, 4+ ReaL labels, ``num_samples`` counts these images;
    * ``top1_multilabel``: percentage of those images whose highest-scored class is in their set
      (ReaL accuracy; ties go to the lowest class index, as ``precision@1``, which it equals);
    * ``top1_original``: percentage of the images with an original single label (``>= 0``) whose
      highest-scored class is that label (ImageNet top-1), over every such image, with or without
      a label set; ``num_samples_original`` counts them;
    * ``num_samples_without_labels``: images left out of the multi-label metrics.

    Args:
        scores: ``N x L`` probabilities, finite, in ``[0, 1]``.
        targets: ``N x L`` binary label sets (rows of images without one are ignored).
        has_target: ``N`` booleans, whether the image has a label set.
        original_labels: ``N`` class indices of the original single label, -1 for none.

    Raises:
        ValueError: on bad shapes or values (as :func:`compute_metrics`), or an original label
            outside ``-1 .. L - 1``.
    """
    s, t = _validate(scores, targets)
    n, num_classes = s.shape
    known = _to_numpy(has_target, "has_target").astype(bool).reshape(-1)
    original = _to_numpy(original_labels, "original_labels").astype(np.int64).reshape(-1)
    if known.shape != (n,) or original.shape != (n,):
        raise ValueError(f"has_target and original_labels need {n} entries, got {known.shape} and {original.shape}")
    if original.min(initial=-1) < -1 or original.max(initial=-1) >= num_classes:
        raise ValueError(f"original_labels must be -1 (none) or a class index in 0..{num_classes - 1}")
    if known.any():
        metrics = compute_metrics(s[known], t[known], threshold=threshold, ks=ks, class_names=class_names)
        best = np.argmax(s[known], axis=1)  # first maximum: the lowest class index among ties
        metrics["top1_multilabel"] = 100.0 * float(np.mean(t[known][np.arange(best.size), best]))
    else:
        metrics = {"num_samples": 0.0, "mAP_macro": float("nan"), "top1_multilabel": float("nan")}
    with_original = original >= 0
    metrics["num_samples_original"] = float(with_original.sum())
    metrics["top1_original"] = (
        100.0 * float(np.mean(np.argmax(s[with_original], axis=1) == original[with_original]))
        if with_original.any()
        else float("nan")
    )
    metrics["num_samples_without_labels"] = float((~known).sum())
    return metrics


class MultiLabelMetricAccumulator(Metric):
    """Collects ``(probs, targets, dataset index)`` over an epoch and evaluates all of it at once.

    AP is not decomposable over batches, so the rows themselves are stored (list states reduced
    with ``"cat"``, which torchmetrics gathers across DDP ranks). The ``DistributedSampler`` pads
    the last rounds by repeating samples so every rank gets the same count; after gathering,
    rows are deduplicated by dataset index (the first occurrence is kept, and the result is
    ordered by index) so that every sample counts exactly once, as the metric spec requires.
    Works the same in a single process, where there is nothing to gather.

    Evaluation sets whose items carry ``original_label`` and ``has_target`` (ImageNet with ReaL,
    :mod:`splml.data.datasets.imagenet`) pass them to :meth:`update`; they are gathered like the
    rows, and :meth:`compute` then returns :func:`compute_relabelled_metrics` instead (a superset
    of the keys). Without them the result is exactly :func:`compute_metrics`'.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        threshold: float = 0.5,
        ks: Sequence[int] = (1, 3, 5),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.threshold = float(threshold)
        self.ks = tuple(ks)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("original_labels", default=[], dist_reduce_fx="cat")
        self.add_state("has_target", default=[], dist_reduce_fx="cat")

    def update(  # type: ignore[override]
        self,
        probs: Tensor,
        targets: Tensor,
        indices: Tensor,
        original_labels: Tensor | None = None,
        has_target: Tensor | None = None,
    ) -> None:
        """Store one batch: ``probs`` and ``targets`` are ``B x L``, ``indices`` the ``B`` dataset indices.

        ``original_labels`` (B class indices, -1 = none) and ``has_target`` (B booleans) describe
        a relabelled single-label set; None means no original label and a known target.
        """
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be B x {self.num_classes}, got shape {tuple(probs.shape)}")
        if targets.shape != probs.shape:
            raise ValueError(f"targets must have the shape of probs {tuple(probs.shape)}, got {tuple(targets.shape)}")
        indices = torch.as_tensor(indices, device=probs.device).reshape(-1)
        if indices.numel() != probs.shape[0]:
            raise ValueError(f"indices must have {probs.shape[0]} entries, got {indices.numel()}")
        # Fixed dtypes so that all ranks gather tensors of the same type (bf16/int targets differ).
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().float())
        self.indices.append(indices.detach().long())
        batch = probs.shape[0]
        for name, value, fill in (("original_labels", original_labels, -1), ("has_target", has_target, 1)):
            value = torch.full((batch,), fill, device=probs.device) if value is None else torch.as_tensor(value)
            if value.numel() != batch:
                raise ValueError(f"{name} must have {batch} entries, got {value.numel()}")
            getattr(self, name).append(value.detach().reshape(-1).to(device=probs.device, dtype=torch.long))

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        """Deduplicate the gathered rows by dataset index and run :func:`compute_metrics` on them."""
        if isinstance(self.indices, list) and len(self.indices) == 0:
            raise ValueError("MultiLabelMetricAccumulator.compute() called before any update()")
        probs = dim_zero_cat(self.probs).cpu().numpy()
        targets = dim_zero_cat(self.targets).cpu().numpy()
        indices = dim_zero_cat(self.indices).cpu().numpy()
        unique_idx, first, inverse = np.unique(indices, return_index=True, return_inverse=True)
        # Padding repeats the same sample, hence the same ground truth; different targets
        # under one index mean indices collide (e.g. two datasets mixed), not padding.
        if unique_idx.size != indices.size and not np.array_equal(targets, targets[first][inverse.reshape(-1)]):
            raise ValueError("rows sharing a dataset index have different targets; indices are not unique keys")
        original = dim_zero_cat(self.original_labels).cpu().numpy()[first]
        has_target = dim_zero_cat(self.has_target).cpu().numpy()[first] > 0
        if has_target.all() and (original < 0).all():
            return compute_metrics(
                probs[first],
                targets[first],
                threshold=self.threshold,
                ks=self.ks,
                class_names=self.class_names,
            )
        return compute_relabelled_metrics(
            probs[first], targets[first], has_target, original, self.threshold, self.ks, self.class_names
        )
