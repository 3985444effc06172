"""EMA score store: expected positives for EN/EP and the consistency target for CL.

Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
Single-Label Annotations*, WACV 2023. The store keeps, per training sample, an exponential
moving average of the model's class probabilities::

    s_n <- mu * s_n + (1 - mu) * p_n          after every training forward of sample n

initialised to 1 at the annotated class and 0 elsewhere. At the start of every epoch (but the
first, where the annotated labels are used), class i's expected positives are the
``round(K * count_i)`` samples with the highest ``s_ni`` (``count_i`` = samples annotated with
class i), so that on average K labels per image are expected positive.

Extras attached to each training batch: ``expected_positive`` (bool B x L) and ``ema_scores``
(the rows before this step's update, float B x L).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from splml.methods.store import StoreCallback, precision_recall


def expected_positive_mask(scores: Tensor, annotated: Tensor, expected_positives: float) -> Tensor:
    """Per class, the ``round(K * count_i)`` highest-scored samples (clamped to N); bool N x L."""
    num_samples, num_classes = scores.shape
    counts = annotated.sum(0)
    mask = torch.zeros_like(annotated, dtype=torch.bool)
    for c in range(num_classes):
        k = min(num_samples, round(expected_positives * float(counts[c])))
        if k > 0:
            # Stable ordering (score descending, then index) so every rank picks the same rows.
            order = torch.argsort(-scores[:, c], stable=True)[:k]
            mask[order, c] = True
    return mask


class ScoreStore(StoreCallback):
    """Owns the N x L EMA score table and the expected-positive mask of the current epoch."""

    def __init__(
        self, num_samples: int, num_classes: int, momentum: float = 0.8, expected_positives: float | None = None
    ) -> None:
        super().__init__(num_samples, num_classes)
        if not 0 <= momentum < 1:
            raise ValueError(f"score store momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.expected_positives = None if expected_positives is None else float(expected_positives)

    def merged_with(self, other: StoreCallback) -> ScoreStore:
        """One store serves every part of a combined loss (EN + CL both read it)."""
        assert isinstance(other, ScoreStore)
        if not math.isclose(self.momentum, other.momentum):
            raise ValueError(
                f"two parts of the loss ask for different score momenta ({self.momentum}, {other.momentum})"
            )
        if self.expected_positives is None:
            self.expected_positives = other.expected_positives
        return self

    # -- life cycle -------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or "scores" in self.tensors:
            return
        self.check_size(trainer)
        annotated = self.train_observed(trainer) > 0.5
        self.tensors["scores"] = annotated.float()
        self.tensors["annotated"] = annotated
        self.tensors["expected_positive"] = annotated.clone()
        self.meta["mask_epoch"] = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.expected_positives is not None and epoch > 0 and self.meta.get("mask_epoch") != epoch:
            self.tensors["expected_positive"] = expected_positive_mask(
                self.tensors["scores"], self.tensors["annotated"], self.expected_positives
            )
            self.meta["mask_epoch"] = epoch
        self._log_diagnostics(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        idx = self.batch_indices(batch).cpu()
        extras = self.extras(batch)
        extras["ema_scores"] = self.tensors["scores"][idx].to(pl_module.device)
        extras["expected_positive"] = self.tensors["expected_positive"][idx].to(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        idx, probs = self.gather_updates(batch, outputs["outputs"]["logits"].float().sigmoid())
        scores = self.tensors["scores"]
        scores[idx] = self.momentum * scores[idx] + (1 - self.momentum) * probs

    # -- diagnostics ------------------------------------------------------------------------
    def _log_diagnostics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        truth = self.train_targets(trainer)
        if truth is None or self.expected_positives is None:
            return
        truth = truth > 0.5
        annotated = self.tensors["annotated"]
        extra = self.tensors["expected_positive"] & ~annotated
        precision, recall = precision_recall(extra, truth & ~annotated)
        penalised_false_negatives = float((truth & ~annotated & ~self.tensors["expected_positive"]).sum())
        values = {
            "diag/extra_positive_precision": precision,
            "diag/extra_positive_recall": recall,
            "diag/extra_positives": float(extra.sum()),
            "diag/false_negatives_penalised": penalised_false_negatives,
        }
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)
