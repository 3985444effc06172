"""AdaGC's dual-EMA store: the weight-EMA teacher and the per-sample temporal EMA of its predictions.

RECONSTRUCTION from the published summary (see :mod:`splml.methods.adagc.loss`). The rows of the
temporal EMA are the pseudo-labels ``extras["adagc_pseudo"]`` of the GC loss; the predictions it
records each epoch are what the stage switch's indicator is computed from. Everything that
decides the course of training is reproducible on resume: the teacher weights and the store are
checkpointed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from splml.methods.adagc.indicator import early_learning_indicator
from splml.methods.adagc.teacher import EMATeacher, eval_mode, forward_context
from splml.methods.store import StoreCallback, precision_recall


class DualEMAStore(StoreCallback):
    """Weight-EMA teacher + per-sample temporal EMA of its predictions (the pseudo-labels).

    Per optimizer step (``on_train_batch_end``): the teacher's weights move towards the
    student's (:class:`~splml.methods.adagc.teacher.EMATeacher`, momentum
    :func:`~splml.methods.adagc.teacher.teacher_momentum_at`); then the teacher, in
    eval mode and without gradients, predicts the batch's *clean* images (``batch["clean_image"]``
    when Mixup replaced ``batch["image"]``), and those probabilities ``q`` update the store::

        s_n <- mu * s_n + (1 - mu) * q_n        (the first update of a sample sets s_n = q_n)

    ``s`` starts at the observed positives (1) and 0 elsewhere -- AN's assumption -- until a
    sample has been predicted once; the first prediction replaces it rather than being averaged
    with it, so the pseudo-labels carry no start-up bias towards 0. The teacher runs during the
    warm-up too: the stage switch's indicator is computed from its predictions, and the store is
    warm when GC starts.

    ``teacher_every = k > 1`` (a cost option, not part of the method): each sample is predicted
    in one epoch out of k (those with ``(index + epoch) % k == 0``), so the teacher forward costs
    1/k of a full one; the temporal EMA then moves once per sample every k epochs and the
    indicator of an epoch is computed on the N/k samples predicted in it.

    ``dual_ema=False`` (ablation "single EMA"): no teacher; the same eval-mode, no-grad forward
    is made with the student's current weights, so the only difference is the weight EMA.

    Tensors: ``pseudo`` (float N x L, the temporal EMA), ``latest`` (float N x L, the latest
    prediction of each sample) and ``latest_epoch`` (int N, its epoch) for the indicator,
    ``annotated``/``unknown`` (bool N x L), ``update_count``. The teacher's ``state_dict`` is
    saved next to them in the checkpoint.

    Extras attached to each training batch: ``adagc_pseudo`` (float B x L, rows before this
    step's update). Per-epoch diagnostics against the hidden labels (when known):
    ``diag/pseudo_label_precision``/``_recall``/``_positives`` of the unknown entries with
    ``s > 0.5`` and ``diag/pseudo_label_mae`` of ``s`` on unknown entries. (They are not named
    ``diag/extra_positive_*``: the module logs those from the loss's ``pseudo_positive_mask``,
    i.e. what the loss actually trains as positive, and one name must have one writer.)
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        dual_ema: bool = True,
        teacher_momentum: float = 0.999,
        teacher_ramp: bool = True,
        temporal_momentum: float = 0.7,
        teacher_every: int = 1,
    ) -> None:
        super().__init__(num_samples, num_classes)
        self.check_options(teacher_momentum, temporal_momentum, teacher_every)
        self.teacher_every = int(teacher_every)
        self.dual_ema = bool(dual_ema)
        self.teacher_momentum = float(teacher_momentum)
        self.teacher_ramp = bool(teacher_ramp)
        self.temporal_momentum = float(temporal_momentum)
        self._ema: EMATeacher | None = None
        self._pending_teacher: dict[str, Tensor] | None = None

    @staticmethod
    def check_options(teacher_momentum: float, temporal_momentum: float, teacher_every: int) -> None:
        """Raise ValueError for options the store cannot work with (also called when AdaGC's loss is built)."""
        if int(teacher_every) < 1:
            raise ValueError(f"teacher_every must be >= 1 (1 = every sample every epoch), got {teacher_every}")
        if not 0 <= teacher_momentum < 1:
            raise ValueError(f"teacher momentum must be in [0, 1), got {teacher_momentum}")
        if not 0 <= temporal_momentum < 1:
            raise ValueError(f"temporal momentum must be in [0, 1), got {temporal_momentum}")

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The teacher network (None before setup, and without dual EMA)."""
        return None if self._ema is None else self._ema.module

    # -- life cycle -------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if "pseudo" not in self.tensors:
            self.check_size(trainer)
            observed = self.train_observed(trainer)
            self.tensors["annotated"] = observed > 0.5
            self.tensors["unknown"] = observed.abs() < 0.5
            self.tensors["pseudo"] = self.tensors["annotated"].float()
            self.tensors["latest"] = torch.zeros(self.num_samples, self.num_classes)
            self.tensors["latest_epoch"] = torch.full((self.num_samples,), -1, dtype=torch.int32)
            self.meta.setdefault("teacher_step", 0)
        if self.dual_ema and self._ema is None:
            # Lightning restores callback states after setup: a resumed run overwrites this copy.
            self._ema = EMATeacher(pl_module.model, self.teacher_momentum, self.teacher_ramp)
            if self._pending_teacher is not None:
                self.teacher.load_state_dict(self._pending_teacher)
                self._pending_teacher = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.teacher is not None:
            self.teacher.to(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_diagnostics(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        idx = self.batch_indices(batch).cpu()
        self.extras(batch)["adagc_pseudo"] = self.tensors["pseudo"][idx].to(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if self._ema is not None and step > int(self.meta.get("teacher_step", 0)):
            # Only after a real optimizer step (with gradient accumulation several batches share one).
            self._ema.update(pl_module.model, step)
            self.meta["teacher_step"] = step
        images = batch.get("clean_image", batch["image"])
        if self.teacher_every > 1:
            # Each sample is predicted in one epoch out of teacher_every: (index + epoch) % k == 0.
            local = self.batch_indices(batch)
            chosen = torch.nonzero((local + int(trainer.current_epoch)) % self.teacher_every == 0).flatten()
            padded = batch.get("padded")
            padded = torch.zeros_like(local, dtype=torch.bool) if padded is None else torch.as_tensor(padded).bool()
            batch = {"index": local[chosen], "padded": padded.to(local.device)[chosen]}
            images = images[chosen.to(images.device)]
        predicted = (
            self.predict(trainer, pl_module, images) if images.shape[0] else images.new_zeros(0, self.num_classes)
        )
        idx, probs = self.gather_updates(batch, predicted)
        first = (self.coverage()[idx] == 1).unsqueeze(1)  # gather_updates has just counted this one
        pseudo = self.tensors["pseudo"]
        mu = self.temporal_momentum
        pseudo[idx] = torch.where(first, probs, mu * pseudo[idx] + (1 - mu) * probs)
        self.tensors["latest"][idx] = probs
        self.tensors["latest_epoch"][idx] = int(trainer.current_epoch)

    def predict(self, trainer: Any, pl_module: L.LightningModule, images: Tensor) -> Tensor:
        """Probabilities of the prediction source (teacher, or the student without dual EMA)."""
        net = self.teacher if self.teacher is not None else pl_module.model
        with torch.no_grad(), eval_mode(net), forward_context(trainer):
            logits = net(images)["logits"]
        return logits.detach().float().sigmoid()

    # -- what the stage switch reads --------------------------------------------------------
    def early_learning_indicator(self, epoch: int) -> float:
        """:func:`early_learning_indicator` of the predictions recorded during ``epoch``."""
        if "latest" not in self.tensors:
            return float("nan")
        rows = self.tensors["latest_epoch"] == int(epoch)
        return early_learning_indicator(self.tensors["latest"][rows], self.tensors["annotated"][rows])

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        source = self.teacher.state_dict() if self.teacher is not None else self._pending_teacher
        state["teacher"] = None if source is None else {k: v.detach().cpu().clone() for k, v in source.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        teacher = state.pop("teacher", None)
        if self.dual_ema and teacher is None:
            raise ValueError("DualEMAStore: the checkpoint has no teacher (was it trained with dual_ema=false?)")
        super().load_state_dict(state)
        if not self.dual_ema:
            return
        if self.teacher is not None:
            self.teacher.load_state_dict(teacher)
        else:
            self._pending_teacher = {k: v.clone() for k, v in teacher.items()}

    def checksum(self) -> str:
        """The store's digest, extended with the teacher's weights (identical on every rank)."""
        if self.teacher is None:
            return super().checksum()
        digest = hashlib.blake2b(super().checksum().encode(), digest_size=16)
        for name, value in self.teacher.state_dict().items():
            digest.update(name.encode())
            # Raw bytes through a uint8 view: works for every dtype (NumPy has no bfloat16).
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- diagnostics ------------------------------------------------------------------------
    def _log_diagnostics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        truth = self.train_targets(trainer)
        seen = self.coverage() > 0
        if truth is None or not bool(seen.any()):
            return
        unknown = self.tensors["unknown"] & seen.unsqueeze(1)
        hidden = (truth > 0.5) & unknown
        pseudo = self.tensors["pseudo"]
        selected = (pseudo > 0.5) & unknown
        precision, recall = precision_recall(selected, hidden)
        values = {
            "diag/pseudo_label_precision": precision,
            "diag/pseudo_label_recall": recall,
            "diag/pseudo_label_positives": float(selected.sum()),
            "diag/pseudo_label_mae": float((pseudo - truth).abs()[unknown].mean()) if bool(unknown.any()) else math.nan,
        }
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)
