"""AdaGC's Mixup inside the gradient-calibration stage (RECONSTRUCTION; see :mod:`splml.methods.adagc.loss`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor


class GCMixup(L.Callback):
    """Mixup of GC-stage batches: ``x <- lam x + (1 - lam) x[perm]``, ``lam ~ Beta(alpha, alpha)``.

    Runs after :class:`EarlyLearningStageSwitch` (it reads ``extras["adagc_stage"]``) and leaves
    warm-up batches alone. The clean images stay in ``batch["clean_image"]`` for the teacher, and
    ``extras["mixup"] = {"perm", "lam"}`` tells the loss how to mix the (observed + pseudo)
    targets the same way. ``lam`` and ``perm`` come from a local NumPy generator seeded with
    (seed, epoch, batch index, rank) -- not from the global RNG and not from ``global_step``
    (which repeats under gradient accumulation) -- so a resumed run draws the same mixes.
    NumPy rather than torch because torch has no Beta sampler that takes a generator.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"Mixup alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.seed = int(seed)

    def draw(self, batch_size: int, epoch: int, batch_idx: int, rank: int = 0) -> tuple[Tensor, float]:
        """The permutation and lambda of one batch (pure function of its arguments and the seed)."""
        rng = np.random.default_rng(np.random.SeedSequence([abs(self.seed), epoch, batch_idx, rank]))
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(rng.permutation(batch_size)).long()
        return perm, lam

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        extras = batch.setdefault("extras", {})
        if "adagc_stage" not in extras:
            raise RuntimeError("GCMixup must run after EarlyLearningStageSwitch (no extras['adagc_stage'])")
        if extras["adagc_stage"] != "gc":
            return
        image = batch["image"]
        perm, lam = self.draw(
            image.shape[0], int(trainer.current_epoch), int(batch_idx), int(getattr(trainer, "global_rank", 0))
        )
        perm = perm.to(image.device)
        batch["clean_image"] = image
        batch["image"] = lam * image + (1 - lam) * image[perm]
        extras["mixup"] = {"perm": perm, "lam": lam}
