"""Soft-negative store for EM + APL (asymmetric pseudo-labelling).

Zhou et al., *Acknowledging the Unknown for Multi-Label Learning with Single Positive Labels*,
ECCV 2022. From epoch ``warmup`` on, at the start of every epoch, each class c receives
``floor(0.9 * U_c / (epochs - warmup))`` new soft negatives (``U_c`` = unknown entries of class c
at the start): the not-yet-labelled unknown entries with the lowest latest probability. Their
probability at that moment is stored as a fixed soft target. No positive pseudo-labels.

The latest probability of every (sample, class) is kept from the training forwards, so no extra
pass over the data is needed. Extras: ``apl_target`` (float B x L), ``apl_mask`` (bool B x L).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from splml.methods.store import StoreCallback, precision_recall


class SoftNegativeStore(StoreCallback):
    """Owns the APL soft negatives (N x L targets and mask) and the latest probability of every entry."""

    def __init__(self, num_samples: int, num_classes: int, warmup: int = 5, fraction: float = 0.9) -> None:
        super().__init__(num_samples, num_classes)
        if warmup < 0:
            raise ValueError(f"APL warmup must be >= 0, got {warmup}")
        self.warmup = int(warmup)
        self.fraction = float(fraction)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or "target" in self.tensors:
            return
        self.check_size(trainer)
        unknown = self.train_observed(trainer).abs() < 0.5
        self.tensors["unknown"] = unknown
        self.tensors["latest_probs"] = torch.full((self.num_samples, self.num_classes), 0.5)
        self.tensors["target"] = torch.zeros(self.num_samples, self.num_classes)
        self.tensors["mask"] = torch.zeros(self.num_samples, self.num_classes, dtype=torch.bool)
        self.meta["assigned_epochs"] = []

    def per_epoch_counts(self, max_epochs: int) -> torch.Tensor:
        rounds = max(1, max_epochs - self.warmup)
        return torch.floor(self.fraction * self.tensors["unknown"].sum(0).float() / rounds).long()

    def assign(self, max_epochs: int) -> None:
        """Give every class its quota of new soft negatives (lowest latest probability first)."""
        counts = self.per_epoch_counts(max_epochs)
        probs, mask = self.tensors["latest_probs"], self.tensors["mask"]
        free = self.tensors["unknown"] & ~mask
        for c in range(self.num_classes):
            k = min(int(counts[c]), int(free[:, c].sum()))
            if k <= 0:
                continue
            scores = torch.where(free[:, c], probs[:, c], torch.full_like(probs[:, c], math.inf))
            rows = torch.argsort(scores, stable=True)[:k]
            mask[rows, c] = True
            self.tensors["target"][rows, c] = probs[rows, c]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch >= self.warmup and epoch not in self.meta["assigned_epochs"]:
            self.assign(int(trainer.max_epochs or epoch + 1))
            self.meta["assigned_epochs"] = [*self.meta["assigned_epochs"], epoch]
        truth = self.train_targets(trainer)
        if truth is not None:
            mask = self.tensors["mask"]
            wrong = mask & (truth > 0.5)
            precision, _ = precision_recall(mask, truth < 0.5)
            values = {
                "diag/soft_negative_precision": precision,
                "diag/soft_negatives": float(mask.sum()),
                "diag/soft_negatives_on_true_positives": float(wrong.sum()),
                "diag/false_negatives_penalised": float((truth > 0.5)[self.tensors["unknown"]].sum()),
            }
            pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        idx = self.batch_indices(batch).cpu()
        extras = self.extras(batch)
        extras["apl_target"] = self.tensors["target"][idx].to(pl_module.device)
        extras["apl_mask"] = self.tensors["mask"][idx].to(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        idx, probs = self.gather_updates(batch, outputs["outputs"]["logits"].float().sigmoid())
        self.tensors["latest_probs"][idx] = probs
