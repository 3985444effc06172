"""The callbacks of AdaGC (RECONSTRUCTION from the published summary; see ``splml.losses.adagc``).

* :class:`EarlyLearningStageSwitch` decides when the warm-up (AN) ends and gradient calibration
  starts, from the early-learning indicator of every finished epoch, and tags every training
  batch with ``extras["adagc_stage"]``.
* :class:`DualEMAStore` owns the two EMAs: a weight-EMA teacher of the model (per optimizer step)
  and the per-sample temporal EMA of the teacher's predictions (N x L, one update per sample and
  epoch), whose rows are the pseudo-labels ``extras["adagc_pseudo"]``.
* :class:`GCMixup` mixes the images of GC-stage batches and tells the loss how
  (``extras["mixup"]``), keeping the clean images for the teacher.

Everything that decides the course of training is reproducible on resume: the indicator curve,
the trigger epoch, the teacher weights and the temporal store are checkpointed, and Mixup's draws
derive from (seed, epoch, batch index, rank) through a local generator.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from splml.callbacks.store import StoreCallback, distributed_ready, precision_recall
from splml.metrics import average_precision_per_class

# -- the early-learning indicator and the trigger ------------------------------------------------


def early_learning_indicator(probs: Tensor, annotated: Tensor) -> float:
    """Macro AP (percent) of the predictions against the *observed* labels ``z``.

    Unknown entries count as negatives, exactly as AN trains them. Why this measure (and not,
    say, the mean probability on the observed positives): it follows both halves of the
    memorisation story. While the network learns the clean signal it ranks the annotated
    positive of each class above the other images, so the AP rises fast; then it plateaus; and
    when the network starts memorising the false negatives it pushes the *hidden* positives
    (labelled 0 in ``z``) below everything, which raises the AP against ``z`` again. A
    probability averaged over the positives alone would not see the second rise, and an accuracy
    at 0.5 is dominated by the mass of negatives. AP is threshold-free and ranking-based, so
    calibration drift of the teacher does not move it. Classes without an observed positive
    among the rows are left out (their AP is undefined). Returns NaN when no class is left.
    """
    if probs.numel() == 0:
        return float("nan")
    ap = average_precision_per_class(probs.double().cpu().numpy(), annotated.cpu().numpy().astype(np.float64))
    valid = ap[~np.isnan(ap)]
    return float(100.0 * valid.mean()) if valid.size else float("nan")


def saturating_curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a (1 - exp(-b x^c))``: the early-learning model of the indicator."""
    return a * (1.0 - np.exp(-b * np.power(x, c)))


def saturating_slope(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Derivative of :func:`saturating_curve` with respect to ``x``."""
    return a * b * c * np.power(x, c - 1.0) * np.exp(-b * np.power(x, c))


def fit_saturating_curve(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares ``(a, b, c)`` of :func:`saturating_curve`, or None when no fit converges.

    Robustness measures, because the fit runs on a handful of noisy points: ``y`` is scaled to
    max |y| = 1 (the indicator is in percent), the parameters are bounded (``a`` in (0, 10] in
    scaled units, ``b`` in (0, 20], ``c`` in [0.2, 5]), several starting points are tried and
    the one with the smallest residual wins, and convergence failures or non-finite results are
    skipped. ``x`` must be positive (epochs are counted from 1).
    """
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if y.size < 3 or not math.isfinite(scale) or scale <= 0:
        return None
    from scipy.optimize import OptimizeWarning, curve_fit

    yn = y / scale
    lower, upper = np.array([1e-6, 1e-6, 0.2]), np.array([10.0, 20.0, 5.0])
    a0 = float(np.clip(np.max(yn), 1e-3, 10.0))
    best: tuple[float, np.ndarray] | None = None
    for b0 in (0.1, 0.5, 2.0):
        for c0 in (0.5, 1.0, 2.0):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    params, _ = curve_fit(saturating_curve, x, yn, p0=[a0, b0, c0], bounds=(lower, upper), maxfev=1000)
            except (RuntimeError, ValueError, FloatingPointError):
                continue
            residual = float(np.sum((saturating_curve(x, *params) - yn) ** 2))
            if np.all(np.isfinite(params)) and math.isfinite(residual) and (best is None or residual < best[0]):
                best = (residual, params)
    if best is None:
        return None
    a, b, c = best[1]
    return float(a * scale), float(b), float(c)


def _window_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` over ``x``."""
    xc = x - x.mean()
    return float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))


def early_learning_has_ended(curve: Sequence[float], window: int, horizon: int | None = None) -> bool:
    """Whether the indicator values of epochs ``0..n-1`` show the end of early learning.

    1. Fit :func:`saturating_curve` to the finite points (epoch ``e`` at ``x = e + 1``); if no
       fit converges, fall back to the raw finite-difference slopes.
    2. The fitted *mean* slope is the average of ``f'`` over the warm-up horizon ``[1, H]``,
       ``(f(H) - f(1)) / (H - 1)`` with ``H = horizon`` (the caller passes ``max_warmup``; at
       least the observed span). The knee is the first observed epoch, at or after the steepest
       fitted slope, where the fitted slope falls below that mean (starting from the steepest
       point matters for ``c > 1``, where the curve starts slowly). Why the horizon and not the
       observed prefix: on a prefix of *any* concave rising curve the slope of the later half is
       below the prefix's mean slope, so a prefix mean would fire after a fixed number of epochs
       whatever the curve; over a fixed horizon the knee moves with the fitted rate ``b``.
    3. Confirmation on the raw curve (a fit on a few noisy points can be fooled): the last
       ``window`` epochs must all lie at or after the knee, and their least-squares slope must
       also be below the mean slope of step 2 (without a fit: the raw mean slope).

    A curve that does not rise overall (mean slope <= 0) never ends early learning: the caller's
    ``max_warmup`` forces the switch then.
    """
    y_all = np.asarray(curve, dtype=np.float64)
    x_all = np.arange(1, y_all.size + 1, dtype=np.float64)
    finite = np.isfinite(y_all)
    x, y = x_all[finite], y_all[finite]
    if y.size < max(4, window + 1):  # 3 parameters need more than 3 points to say anything
        return False
    end = max(float(horizon or 0), float(x[-1]))
    params = fit_saturating_curve(x, y)
    if params is not None:
        slopes = saturating_slope(x, *params)
        ends = saturating_curve(np.array([1.0, end]), *params)
        mean_slope = float(ends[1] - ends[0]) / (end - 1.0)
    else:
        slopes = np.gradient(y, x)
        mean_slope = float(y[-1] - y[0]) / float(x[-1] - x[0])
    if not np.all(np.isfinite(slopes)) or not mean_slope > 0:
        return False
    peak = int(np.argmax(slopes))
    below = np.flatnonzero(slopes[peak:] < mean_slope)
    if below.size == 0:
        return False
    knee = peak + int(below[0])
    if y.size - window < knee:
        return False
    return _window_slope(x[-window:], y[-window:]) < mean_slope


def detect_end_of_early_learning(curve: Sequence[float], min_warmup: int, max_warmup: int, window: int) -> int | None:
    """The first epoch to train with GC, given the indicator of epochs ``0..len(curve)-1``.

    Replays the online rule over the prefixes of ``curve``: after ``n`` finished epochs
    (``min_warmup <= n``) the switch happens at epoch ``n`` if :func:`early_learning_has_ended`
    holds for ``curve[:n]``; at ``n = max_warmup`` it happens regardless. Returns None while
    neither has happened, so a training run calling it after every epoch switches at the first
    epoch it returns, and calling it on a whole recorded curve tells which epoch that was.
    """
    if not 0 <= min_warmup <= max_warmup:
        raise ValueError(f"need 0 <= min_warmup <= max_warmup, got {min_warmup}, {max_warmup}")
    if window < 2:
        raise ValueError(f"the slope window needs at least 2 epochs, got {window}")
    for n in range(min_warmup, min(len(curve), max_warmup) + 1):
        if n >= max_warmup or early_learning_has_ended(curve[:n], window, horizon=max_warmup):
            return n
    return None


# -- the weight-EMA teacher ----------------------------------------------------------------------


def teacher_momentum_at(step: int, momentum: float, ramp: bool = True) -> float:
    """EMA momentum after ``step`` optimizer steps (1 = the first).

    With ``ramp`` (Tarvainen & Valpola, Mean Teacher, 2017) it is ``min(momentum, 1 - 1/step)``:
    the teacher is the plain average of all student weights so far until that average would
    move faster than ``momentum`` allows. Without it a 0.999 teacher would still be ~37 % random
    initialisation after 1000 steps, which is longer than many short runs here.
    """
    if not ramp:
        return float(momentum)
    return float(min(momentum, 1.0 - 1.0 / max(1, step)))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_T <- m theta_T + (1 - m) theta_S`` for every parameter; buffers copied.

    Buffers (batch-norm running statistics, counters) are copied rather than averaged: they are
    statistics of the student's current features, not weights. The two modules must have the
    same structure (the teacher is a deep copy of the student).
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def broadcast_buffers_(module: nn.Module) -> None:
    """Rank 0's buffers on every rank (no-op without distributed training).

    Under DDP the parameters are identical on every rank after the optimizer step, but each
    rank's batch-norm running statistics have just been updated from its own batch (DDP only
    broadcasts rank 0's at the start of the next forward). Copied into the teacher as they are,
    they would make the ranks' teachers -- and their checksums -- differ; DDP's own rule (rank 0
    wins) keeps them identical.
    """
    if not distributed_ready():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def build_teacher(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` in eval mode (never registered in the LightningModule:
    DDP and the optimizer must not see it, and the module's checkpoint must not carry it twice)."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode, restoring every submodule's own mode afterwards.

    Restoring per submodule (not ``model.train()``) keeps a backbone frozen by the linear probe
    in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _forward_context(trainer: Any) -> contextlib.AbstractContextManager[Any]:
    """The precision plugin's autocast context (so the teacher runs at the training precision)."""
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    return plugin.forward_context() if plugin is not None else contextlib.nullcontext()


# -- callbacks ------------------------------------------------------------------------------------


class DualEMAStore(StoreCallback):
    """Weight-EMA teacher + per-sample temporal EMA of its predictions (the pseudo-labels).

    Per optimizer step (``on_train_batch_end``): the teacher's weights move towards the
    student's (:func:`ema_update_`, momentum :func:`teacher_momentum_at`); then the teacher, in
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
        if int(teacher_every) < 1:
            raise ValueError(f"teacher_every must be >= 1 (1 = every sample every epoch), got {teacher_every}")
        self.teacher_every = int(teacher_every)
        if not 0 <= teacher_momentum < 1:
            raise ValueError(f"teacher momentum must be in [0, 1), got {teacher_momentum}")
        if not 0 <= temporal_momentum < 1:
            raise ValueError(f"temporal momentum must be in [0, 1), got {temporal_momentum}")
        self.dual_ema = bool(dual_ema)
        self.teacher_momentum = float(teacher_momentum)
        self.teacher_ramp = bool(teacher_ramp)
        self.temporal_momentum = float(temporal_momentum)
        self.teacher: nn.Module | None = None
        self._pending_teacher: dict[str, Tensor] | None = None

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
        if self.dual_ema and self.teacher is None:
            # Lightning restores callback states after setup: a resumed run overwrites this copy.
            self.teacher = build_teacher(pl_module.model)
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
        if self.teacher is not None and step > int(self.meta.get("teacher_step", 0)):
            # Only after a real optimizer step (with gradient accumulation several batches share one).
            ema_update_(
                self.teacher, pl_module.model, teacher_momentum_at(step, self.teacher_momentum, self.teacher_ramp)
            )
            broadcast_buffers_(self.teacher)
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
        with torch.no_grad(), eval_mode(net), _forward_context(trainer):
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


class EarlyLearningStageSwitch(L.Callback):
    """Ends the AN warm-up at the end of early learning (or at a fixed epoch) and tags batches.

    Indicator: :func:`early_learning_indicator` of the predictions ``source`` (the
    :class:`DualEMAStore`) recorded during each epoch. Lightning writes the epoch's checkpoint at
    the end of validation, before ``on_train_epoch_end``; so the indicator is only *logged* at
    epoch end (``adagc/indicator``, ``adagc/gc_stage``), while it is *recorded* in the curve and
    the switch is *decided* at the start of the next epoch, from the store's checkpointed
    predictions. The curve's length is the epoch marker that makes this idempotent, and the curve
    and the decision are this callback's checkpointed state: a resumed run switches at the same
    epoch as an uninterrupted one. ``adagc/trigger_epoch`` is logged once, when it is decided.

    ``trigger="adaptive"``: :func:`detect_end_of_early_learning` with ``min_warmup``,
    ``max_warmup`` and ``window``; ``trigger="fixed"``: GC from epoch ``fixed_epoch`` (0-based).
    """

    def __init__(
        self,
        source: DualEMAStore,
        trigger: str = "adaptive",
        fixed_epoch: int = 5,
        min_warmup: int = 2,
        max_warmup: int = 10,
        window: int = 3,
    ) -> None:
        super().__init__()
        if trigger not in ("adaptive", "fixed"):
            raise ValueError(f"trigger must be 'adaptive' or 'fixed', got {trigger!r}")
        if not 0 <= min_warmup <= max_warmup:
            raise ValueError(f"need 0 <= min_warmup <= max_warmup, got {min_warmup}, {max_warmup}")
        if window < 2:
            raise ValueError(f"the slope window needs at least 2 epochs, got {window}")
        self.source = source
        self.trigger = trigger
        self.fixed_epoch = int(fixed_epoch)
        self.min_warmup, self.max_warmup, self.window = int(min_warmup), int(max_warmup), int(window)
        #: Indicator of every finished epoch (NaN where no prediction was recorded).
        self.curve: list[float] = []
        #: First epoch trained with GC, once decided.
        self.trigger_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {"curve": list(self.curve), "trigger_epoch": self.trigger_epoch, "trigger": self.trigger}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [float(v) for v in state_dict["curve"]]
        self.trigger_epoch = None if state_dict["trigger_epoch"] is None else int(state_dict["trigger_epoch"])

    def stage(self, epoch: int) -> str:
        return "gc" if self.trigger_epoch is not None and epoch >= self.trigger_epoch else "warmup"

    def should_switch(self, epoch: int) -> bool:
        """Whether GC starts at ``epoch`` given the curve of the epochs before it."""
        if self.trigger == "fixed":
            return epoch >= self.fixed_epoch
        return (
            detect_end_of_early_learning(self.curve[:epoch], self.min_warmup, self.max_warmup, self.window) is not None
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        while len(self.curve) < epoch:  # record the finished epochs not yet in the curve
            self.curve.append(self.source.early_learning_indicator(len(self.curve)))
        if self.trigger_epoch is None and self.should_switch(epoch):
            self.trigger_epoch = epoch
            pl_module.log("adagc/trigger_epoch", float(epoch), on_step=False, on_epoch=True, sync_dist=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        batch.setdefault("extras", {})["adagc_stage"] = self.stage(int(trainer.current_epoch))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        values = {
            "adagc/indicator": self.source.early_learning_indicator(epoch),
            "adagc/gc_stage": 1.0 if self.stage(epoch) == "gc" else 0.0,
        }
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)


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
