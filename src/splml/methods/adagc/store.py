"""AdaGC's dual-EMA store: two weight-EMA teachers, their predictions, and the pseudo-labels.

RECONSTRUCTION (see :mod:`splml.methods.adagc.loss`). The two teachers follow AIO2 (the first
author's earlier method; ``specs/methods.md``, AdaGC, item 5): one weight EMA of the student
updated after every optimizer step (momentum 0.999 there) and one updated once per epoch (0.99).
AIO2 only evaluates its per-epoch EMA; AdaGC's summary speaks of a "dual-EMA module" that fuses
predictions over time, so here the pseudo-label is the mean of the two teachers' probabilities
(our choice). Everything that decides the course of training is checkpointed, and a rollback
restores it (:mod:`splml.methods.adagc.rollback`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from splml.methods.adagc.indicator import CURVE_SCORES
from splml.methods.adagc.teacher import EMATeacher, eval_mode, forward_context
from splml.methods.store import StoreCallback, precision_recall

#: Where the GC stage's pseudo-labels come from.
PSEUDO_SOURCES = ("teacher", "temporal_ema")


class DualEMAStore(StoreCallback):
    """Weight-EMA teachers (per step, per epoch), the per-step teacher's predictions, the pseudo-labels.

    * After every optimizer step (``on_train_batch_end``) the per-step teacher moves towards the
      student (:class:`~splml.methods.adagc.teacher.EMATeacher`, ``teacher_momentum``). During the
      warm-up it then predicts the batch's clean images (eval mode, no gradients), and those
      probabilities are recorded per sample (``latest``, ``latest_epoch``): the monitored curve of
      the stage switch is computed from them (AIO2 monitors the teacher right after its update).
    * Once per epoch (at the start of the next one, so that a checkpoint written at the end of
      validation still resumes it) the per-epoch teacher moves towards the student
      (``epoch_teacher_momentum``); ``epoch_teacher: false`` leaves it out (single EMA).
    * ``pseudo_labels: teacher`` (default, AIO2's online correction): in the GC stage the teachers
      predict each batch *before* the student's step and ``extras["adagc_pseudo"]`` is the mean of
      their probabilities; the loss corrects the unknown entries above its threshold.
    * ``pseudo_labels: temporal_ema`` (the earlier choice, a named variant): after every step the
      teachers' fused prediction updates a per-sample temporal EMA ``s <- mu s + (1 - mu) q``
      (the first prediction of a sample replaces its start value, the observed positives), and
      ``extras["adagc_pseudo"]`` is ``s`` before this step's update.

    Both teachers use the Mean-Teacher ramp ``min(momentum, 1 - 1/k)`` at their ``k``-th update
    (``teacher_ramp``; AIO2 has none, but a 0.99 per-epoch EMA of a 20-epoch run would stay 80 %
    random initialisation). Per-epoch diagnostics against the hidden labels (when known):
    ``diag/teacher_precision``/``_recall`` of the per-step teacher's predictions above 0.5 on the
    unknown entries (warm-up), ``diag/pseudo_label_*`` of the temporal EMA (``temporal_ema`` only).
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        teacher_momentum: float = 0.999,
        epoch_teacher: bool = True,
        epoch_teacher_momentum: float = 0.99,
        teacher_ramp: bool = True,
        pseudo_labels: str = "teacher",
        temporal_momentum: float = 0.7,
    ) -> None:
        super().__init__(num_samples, num_classes)
        self.check_options(teacher_momentum, epoch_teacher_momentum, pseudo_labels, temporal_momentum)
        self.teacher_momentum, self.epoch_teacher_momentum = float(teacher_momentum), float(epoch_teacher_momentum)
        self.epoch_teacher, self.teacher_ramp = bool(epoch_teacher), bool(teacher_ramp)
        self.pseudo_labels, self.temporal_momentum = pseudo_labels, float(temporal_momentum)
        self._teachers: dict[str, EMATeacher] = {}
        self._pending_teachers: dict[str, dict[str, Tensor]] = {}

    @staticmethod
    def check_options(
        teacher_momentum: float, epoch_teacher_momentum: float, pseudo_labels: str, temporal_momentum: float
    ) -> None:
        """Raise ValueError for options the store cannot work with (also called when AdaGC's loss is built)."""
        for name, value in (("teacher", teacher_momentum), ("epoch teacher", epoch_teacher_momentum),
                            ("temporal", temporal_momentum)):  # fmt: skip
            if not 0 <= value < 1:
                raise ValueError(f"AdaGC {name} momentum must be in [0, 1), got {value}")
        if pseudo_labels not in PSEUDO_SOURCES:
            raise ValueError(f"AdaGC pseudo_labels must be one of {PSEUDO_SOURCES}, got {pseudo_labels!r}")

    @property
    def teacher_names(self) -> tuple[str, ...]:
        return ("step", "epoch") if self.epoch_teacher else ("step",)

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The per-step teacher network (None before setup)."""
        return self._teachers["step"].module if "step" in self._teachers else None

    @property
    def epoch_teacher_module(self) -> torch.nn.Module | None:
        """The per-epoch teacher network (None before setup or without it)."""
        return self._teachers["epoch"].module if "epoch" in self._teachers else None

    # -- life cycle -------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if "latest" not in self.tensors:
            self.check_size(trainer)
            observed = self.train_observed(trainer)
            self.tensors["annotated"] = observed > 0.5
            self.tensors["unknown"] = observed.abs() < 0.5
            self.tensors["latest"] = torch.zeros(self.num_samples, self.num_classes)
            self.tensors["latest_epoch"] = torch.full((self.num_samples,), -1, dtype=torch.int32)
            if self.pseudo_labels == "temporal_ema":
                self.tensors["pseudo"] = self.tensors["annotated"].float()
            self.meta.update({"teacher_step": 0, "step_updates": 0, "epoch_updates": 0, "trained_since_fold": False})
        momenta = {"step": self.teacher_momentum, "epoch": self.epoch_teacher_momentum}
        for name in self.teacher_names:
            if name not in self._teachers:
                # Lightning restores callback states after setup: a resumed run overwrites this copy.
                self._teachers[name] = EMATeacher(pl_module.model, momenta[name], self.teacher_ramp)
            if name in self._pending_teachers:
                self._teachers[name].module.load_state_dict(self._pending_teachers.pop(name))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for teacher in self._teachers.values():
            teacher.module.to(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.meta.get("trained_since_fold"):
            # The per-epoch EMA step of the epoch just finished: the student is still its end state.
            if "epoch" in self._teachers:
                self.meta["epoch_updates"] = int(self.meta["epoch_updates"]) + 1
                self._teachers["epoch"].update(pl_module.model, self.meta["epoch_updates"])
            self.meta["trained_since_fold"] = False
        self._log_diagnostics(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        extras = self.extras(batch)
        if self.pseudo_labels == "temporal_ema":
            extras["adagc_pseudo"] = self.tensors["pseudo"][self.batch_indices(batch).cpu()].to(pl_module.device)
        elif extras.get("adagc_stage") == "gc":
            # Before Mixup (a later callback) replaces the images, and before the student's step.
            extras["adagc_pseudo"] = self.predict(trainer, batch["image"])
        else:
            extras["adagc_pseudo"] = None  # the warm-up trains AN: no pseudo-label is read

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.meta["trained_since_fold"] = True
        step = int(trainer.global_step)
        if step > int(self.meta.get("teacher_step", 0)):
            # Only after a real optimizer step (with gradient accumulation several batches share one).
            self.meta["step_updates"] = int(self.meta["step_updates"]) + 1
            self._teachers["step"].update(pl_module.model, self.meta["step_updates"])
            self.meta["teacher_step"] = step
        warmup = self.extras(batch).get("adagc_stage") != "gc"
        temporal = self.pseudo_labels == "temporal_ema"
        if not (warmup or temporal):
            return  # the curve has been decided and the corrections are made online: nothing to record
        images = batch.get("clean_image", batch["image"])
        # The curve needs the per-step teacher; the temporal EMA the fused teachers.
        each = {
            name: self.predict(trainer, images, (name,)) for name in (self.teacher_names if temporal else ("step",))
        }
        fused = torch.stack(list(each.values())).mean(0) if len(each) > 1 else each["step"]
        idx, latest, fused = self.gather_updates(batch, each["step"], fused)
        if warmup:
            self.tensors["latest"][idx] = latest
            self.tensors["latest_epoch"][idx] = int(trainer.current_epoch)
        if temporal:
            first = (self.coverage()[idx] == 1).unsqueeze(1)  # gather_updates has just counted this one
            pseudo, mu = self.tensors["pseudo"], self.temporal_momentum
            pseudo[idx] = torch.where(first, fused, mu * pseudo[idx] + (1 - mu) * fused)

    def predict(self, trainer: Any, images: Tensor, names: tuple[str, ...] | None = None) -> Tensor:
        """Mean probability of the teachers ``names`` (default: both, or the per-step one alone)."""
        probs = []
        for name in names or self.teacher_names:
            net = self._teachers[name].module
            with torch.no_grad(), eval_mode(net), forward_context(trainer):
                probs.append(net(images)["logits"].detach().float().sigmoid())
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)

    # -- what the stage switch reads --------------------------------------------------------
    def curve_value(self, epoch: int, score: str = "jaccard") -> float:
        """The monitored score (``CURVE_SCORES[score]``) of the per-step teacher's predictions during ``epoch``."""
        if "latest" not in self.tensors:
            return float("nan")
        rows = self.tensors["latest_epoch"] == int(epoch)
        return CURVE_SCORES[score](self.tensors["latest"][rows], self.tensors["annotated"][rows])

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        teachers = {name: t.module.state_dict() for name, t in self._teachers.items()}
        teachers.update({k: v for k, v in self._pending_teachers.items() if k not in teachers})
        state["teachers"] = {
            name: {k: v.detach().cpu().clone() for k, v in sd.items()} for name, sd in teachers.items()
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        teachers = state.pop("teachers", None)
        if teachers is None or set(teachers) != set(self.teacher_names):
            found = "none" if teachers is None else sorted(teachers)
            raise ValueError(
                f"DualEMAStore: the checkpoint holds the teachers {found}, this run needs {list(self.teacher_names)} "
                "(was it trained with other epoch_teacher options, or by an earlier AdaGC version?)"
            )
        super().load_state_dict(state)
        for name, weights in teachers.items():
            if name in self._teachers:
                self._teachers[name].module.load_state_dict(weights)
            else:
                self._pending_teachers[name] = {k: v.clone() for k, v in weights.items()}

    def checksum(self) -> str:
        """The store's digest, extended with the teachers' weights (identical on every rank)."""
        digest = hashlib.blake2b(super().checksum().encode(), digest_size=16)
        for name, teacher in sorted(self._teachers.items()):
            for key, value in teacher.module.state_dict().items():
                digest.update(f"{name}.{key}".encode())
                # Raw bytes through a uint8 view: works for every dtype (NumPy has no bfloat16).
                digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- diagnostics ------------------------------------------------------------------------
    def _log_diagnostics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        truth = self.train_targets(trainer)
        if truth is None or "latest" not in self.tensors:
            return
        hidden = (truth > 0.5) & self.tensors["unknown"]
        values: dict[str, float] = {}
        rows = self.tensors["latest_epoch"] == int(trainer.current_epoch) - 1
        if bool(rows.any()):
            unknown = self.tensors["unknown"] & rows.unsqueeze(1)
            selected = (self.tensors["latest"] > 0.5) & unknown
            values["diag/teacher_precision"], values["diag/teacher_recall"] = precision_recall(
                selected, hidden & unknown
            )
        seen = self.coverage() > 0
        if "pseudo" in self.tensors and bool(seen.any()):
            unknown = self.tensors["unknown"] & seen.unsqueeze(1)
            pseudo = self.tensors["pseudo"]
            selected = (pseudo > 0.5) & unknown
            precision, recall = precision_recall(selected, hidden & unknown)
            values.update({
                "diag/pseudo_label_precision": precision, "diag/pseudo_label_recall": recall,
                "diag/pseudo_label_positives": float(selected.sum()),
                "diag/pseudo_label_mae": float((pseudo - truth).abs()[unknown].mean()),
            })  # fmt: skip
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)
