"""Observed-label store for LL-Cp: permanent corrections of the single-positive labels.

Kim et al., *Large Loss Matters in Weakly Supervised Multi-Label Classification*, CVPR 2022.
LL-Cp flips the unknown labels with the largest losses to positive *for good*. The store holds
the N x L observed labels with every flip made so far; it replaces ``batch["observed"]`` before
each forward and applies the loss's ``flip_mask`` after it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from splml.methods.store import StoreCallback, precision_recall


class ObservedLabelStore(StoreCallback):
    """Owns the corrected observed labels (int8 N x L, values -1/0/1)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or "observed" in self.tensors:
            return
        self.check_size(trainer)
        self.tensors["observed"] = self.train_observed(trainer).to(torch.int8)
        self.tensors["initial"] = self.tensors["observed"].clone()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        truth = self.train_targets(trainer)
        if truth is None:
            return
        truth = truth > 0.5
        flipped = (self.tensors["observed"] > 0) & (self.tensors["initial"] <= 0)
        hidden = truth & (self.tensors["initial"] == 0)
        precision, recall = precision_recall(flipped, hidden)
        values = {
            "diag/extra_positive_precision": precision,
            "diag/extra_positive_recall": recall,
            "diag/extra_positives": float(flipped.sum()),
            "diag/false_negatives_penalised": float((hidden & ~flipped).sum()),
        }
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        idx = self.batch_indices(batch).cpu()
        batch["observed"] = self.tensors["observed"][idx].to(device=pl_module.device, dtype=batch["observed"].dtype)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if "flip_mask" not in outputs:
            raise KeyError("ObservedLabelStore needs the loss to return 'flip_mask' (LL-Cp does)")
        idx, flips = self.gather_updates(batch, outputs["flip_mask"].bool())
        flips = flips.bool()
        rows = self.tensors["observed"][idx]
        rows[flips] = 1
        self.tensors["observed"][idx] = rows
