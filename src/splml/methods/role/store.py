"""ROLE's label estimator: an N x L table of learnable logits with its own optimiser.

Cole et al., *Multi-Label Learning from Single Positive Labels*, CVPR 2021. The table is not a
module parameter: under DDP every rank would all-reduce a dense N x L gradient every step, and
the project's rule is that per-sample state lives in callbacks. Instead the rows of a batch are
handed to the loss as a leaf tensor that requires grad; after the backward pass their gradients
are gathered from all ranks and applied with a row-wise Adam (moments and step counts per row,
like ``torch.optim.SparseAdam``), identically on every rank.

Initialisation: unknown entries ``logit(U(0.4, 0.6))``, annotated positives ``logit(0.995)``,
annotated negatives ``logit(0.005)``, drawn from ``seed`` (the same on every rank).

Under ``16-mixed`` the rows' gradients come from the scaled backward pass: they are divided by
the loss scale of that pass (read when the optimizer step begins), and a step the gradient
scaler skipped (non-finite gradients; it then lowers its scale) is skipped here too.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from splml.methods.store import StoreCallback, gradient_scale, precision_recall


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


class LabelEstimatorStore(StoreCallback):
    """Owns ROLE's N x L label-estimate logits, learned by a row-wise Adam at lr x lr_mult."""

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        lr_mult: float = 10.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        super().__init__(num_samples, num_classes)
        self.lr_mult, self.betas, self.eps, self.seed = float(lr_mult), tuple(betas), float(eps), int(seed)
        self._batch_rows: Tensor | None = None
        self._grad_scale: float | None = None  # the loss scale of this step's backward (16-mixed)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or "logits" in self.tensors:
            return
        self.check_size(trainer)
        observed = self.train_observed(trainer)
        gen = torch.Generator().manual_seed(self.seed)
        probs = 0.4 + 0.2 * torch.rand(observed.shape, generator=gen)
        probs = torch.where(observed > 0.5, torch.full_like(probs, 0.995), probs)
        probs = torch.where(observed < -0.5, torch.full_like(probs, 0.005), probs)
        self.tensors["logits"] = _logit(probs)
        self.tensors["exp_avg"] = torch.zeros_like(probs)
        self.tensors["exp_avg_sq"] = torch.zeros_like(probs)
        self.tensors["steps"] = torch.zeros(self.num_samples, dtype=torch.long)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        idx = self.batch_indices(batch).cpu()
        rows = self.tensors["logits"][idx].to(pl_module.device).requires_grad_(True)
        self._batch_rows = rows
        self.extras(batch)["role_g_logits"] = rows

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._grad_scale = gradient_scale(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rows = self._batch_rows
        self._batch_rows = None
        if rows is None or rows.grad is None:
            raise RuntimeError("ROLE label estimator received no gradient: does the loss use extras['role_g_logits']?")
        grad, scale, self._grad_scale = rows.grad.float(), self._grad_scale, None
        if scale is not None:
            grad = grad / scale
        idx, grad = self.gather_updates(batch, grad)
        after = gradient_scale(trainer)
        if scale is not None and after is not None and after < scale:
            return  # the scaler found non-finite gradients and skipped the optimizer step: so does the table
        self.adam_step(idx, grad, lr=self._base_lr(pl_module) * self.lr_mult)

    @staticmethod
    def _base_lr(pl_module: L.LightningModule) -> float:
        return float(getattr(pl_module, "lr", 1e-3))

    def adam_step(self, idx: Tensor, grad: Tensor, lr: float) -> None:
        """Row-wise Adam with per-row bias correction (rows not in the batch are untouched)."""
        beta1, beta2 = self.betas
        t = self.tensors
        t["steps"][idx] += 1
        step = t["steps"][idx].float().unsqueeze(1)
        m = beta1 * t["exp_avg"][idx] + (1 - beta1) * grad
        v = beta2 * t["exp_avg_sq"][idx] + (1 - beta2) * grad * grad
        t["exp_avg"][idx], t["exp_avg_sq"][idx] = m, v
        m_hat = m / (1 - beta1**step)
        v_hat = v / (1 - beta2**step)
        t["logits"][idx] -= lr * m_hat / (v_hat.sqrt() + self.eps)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        truth = self.train_targets(trainer)
        if truth is None:
            return
        truth = truth > 0.5
        unknown = self.train_observed(trainer).abs() < 0.5
        estimated = (self.tensors["logits"] > 0) & unknown
        precision, recall = precision_recall(estimated, truth & unknown)
        values = {
            "diag/extra_positive_precision": precision,
            "diag/extra_positive_recall": recall,
            "diag/extra_positives": float(estimated.sum()),
        }
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)
