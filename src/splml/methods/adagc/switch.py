"""AdaGC's stage switch: when the AN warm-up ends, the rollback, and the corrected stage (RECONSTRUCTION).

Three rules decide when the warm-up ends (:class:`StageTrigger`, option ``trigger``):

* ``aio2`` (default): AIO2's detection of the end of the transition stage on the monitored curve
  (:func:`~splml.methods.adagc.detection.detect_transition`); when it fires after ``n`` epochs
  with trigger epoch ``T < n``, training **rolls back** to its state after ``T`` epochs
  (:mod:`splml.methods.adagc.rollback`) and goes on with corrected labels, so the corrected
  stage starts from a model that has not yet memorised the false negatives. No detection, no
  correction: the run stays AN to the end (as in AIO2).
* ``knee``: the earlier rule of this suite (a knee of a saturating fit, confirmed on the raw
  curve, within ``[min_warmup, max_warmup]``), no rollback -- a named variant.
* ``fixed``: corrections from epoch ``fixed_epoch``; with ``fixed_decided_at = D > fixed_epoch``
  the warm-up runs ``D`` epochs and then rolls back to ``fixed_epoch`` (the rollback without the
  detector, for its ablation and tests).

**Length of the run.** Lightning counts the epochs actually run: its epoch and step counters,
the logs, the best checkpoint and the data order never go backwards. A rollback of ``n - T``
epochs lengthens the loop by as many (``trainer.fit_loop.max_epochs``; a ``trainer.max_steps``
limit grows by the optimizer steps undone), so the run trains the nominal ``max_epochs`` epochs of
the schedule (the learning-rate scheduler is rolled back with the optimizer, so the cosine goes on
from epoch ``T`` to its end) plus the ``n - T`` undone ones: at most twice the nominal length, as
in AIO2. The lengthening is this callback's checkpointed state and is re-applied when a run
resumes (at ``on_fit_start``, after the optimizers and their schedule were built for the nominal
length). A detection after the last nominal epoch is not acted on (the loop has ended; AIO2 stops
there too).

**When.** The curve value of epoch ``e`` is complete at its end, but Lightning writes the epoch's
checkpoint at the end of validation, before ``on_train_epoch_end``; so the value is *recorded*
and the decision (and rollback) *taken* at the start of epoch ``e + 1``, from the store's
checkpointed predictions, before any other callback's epoch-start work. A resumed run therefore
decides, and rolls back, exactly as the uninterrupted one. The snapshot of each warm-up epoch is
taken at the same point.

Logged: ``adagc/curve`` per warm-up epoch; once decided, ``adagc/trigger_epoch`` (the first epoch of
the corrected stage, counted in the schedule's epochs), ``adagc/decided_at`` (epochs run when it was
decided), ``adagc/epochs_rolled_back``, and for ``aio2`` ``adagc/dep``, ``adagc/mid``,
``adagc/vote_w<ws>`` per window and the fit ``adagc/fit_a|b|c``. ``adagc_trigger.png`` in the run
folder draws the curve, the fit and the trigger (also sent to W&B / TensorBoard).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from splml.loggers import log_figure
from splml.methods.adagc.detection import check_window_sizes, detect_transition
from splml.methods.adagc.figures import plot_trigger
from splml.methods.adagc.indicator import CURVE_SCORES, early_learning_has_ended
from splml.methods.adagc.rollback import TrainingSnapshots
from splml.methods.adagc.store import DualEMAStore

log = logging.getLogger(__name__)

#: The ways the warm-up can end.
TRIGGERS = ("aio2", "knee", "fixed")
#: The figure written into the run folder.
FIGURE = "adagc_trigger.png"

# -- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The end of the warm-up: decided after ``decided_at`` epochs; corrections from epoch ``trigger_epoch``."""

    decided_at: int
    trigger_epoch: int
    #: The detection's values (``aio2``), for the logs and the figure.
    detection: dict[str, Any] | None = None


@dataclass(frozen=True)
class StageTrigger:
    """When the warm-up ends; AdaGC's trigger options, checked here once (see the module docstring)."""

    trigger: str = "aio2"
    window_sizes: tuple[int, ...] = (2, 3, 4)
    fixed_epoch: int = 5
    fixed_decided_at: int | None = None
    min_warmup: int = 2
    max_warmup: int = 10
    window: int = 3

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"AdaGC trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        object.__setattr__(self, "window_sizes", check_window_sizes(self.window_sizes))
        for key in ("fixed_epoch", "min_warmup", "max_warmup", "window"):
            object.__setattr__(self, key, int(getattr(self, key)))
        if not 0 <= self.min_warmup <= self.max_warmup:
            raise ValueError(f"AdaGC needs 0 <= min_warmup <= max_warmup, got {self.min_warmup}, {self.max_warmup}")
        if self.window < 2:
            raise ValueError(f"AdaGC slope window must be >= 2 epochs, got {self.window}")
        if self.fixed_decided_at is not None:
            object.__setattr__(self, "fixed_decided_at", int(self.fixed_decided_at))
            rolls_back = self.fixed_decided_at > self.fixed_epoch
            if self.fixed_decided_at < self.fixed_epoch or (rolls_back and self.fixed_epoch < 1):
                raise ValueError(
                    "AdaGC needs fixed_decided_at >= fixed_epoch (and fixed_epoch >= 1 to roll back to it), got "
                    f"fixed_decided_at={self.fixed_decided_at}, fixed_epoch={self.fixed_epoch}"
                )

    @property
    def rolls_back(self) -> bool:
        """Whether a decision of this rule can send training back to an earlier epoch."""
        if self.trigger == "fixed":
            return self.fixed_decided_at is not None and self.fixed_decided_at > self.fixed_epoch
        return self.trigger == "aio2"

    def decide(self, curve: Sequence[float]) -> Decision | None:
        """The decision once the curve of ``len(curve)`` finished epochs shows the end of the warm-up, else None.

        Called after every epoch with the curve so far, it returns a decision at the first epoch
        the rule fires; called on a whole recorded curve, the decision of that first epoch.
        """
        n = len(curve)
        if self.trigger == "fixed":
            decided_at = self.fixed_epoch if self.fixed_decided_at is None else self.fixed_decided_at
            return Decision(decided_at, self.fixed_epoch) if n >= decided_at else None
        if self.trigger == "knee":
            epoch = self.first_knee_epoch(curve)
            return None if epoch is None else Decision(epoch, epoch)
        found = detect_transition(curve, self.window_sizes)
        return None if found is None else Decision(found.detected_at, found.trigger, found.as_dict())

    def first_knee_epoch(self, curve: Sequence[float]) -> int | None:
        """The earlier rule: the first ``n`` in ``[min_warmup, max_warmup]`` whose curve prefix shows a knee."""
        for n in range(self.min_warmup, min(len(curve), self.max_warmup) + 1):
            if n >= self.max_warmup or early_learning_has_ended(curve[:n], self.window, horizon=self.max_warmup):
                return n
        return None


# -- the callback ---------------------------------------------------------------------------------


class EarlyLearningStageSwitch(L.Callback):
    """Records the monitored curve, ends the warm-up (rolling training back if the rule says so), tags batches.

    ``source`` is the :class:`DualEMAStore` whose per-step teacher predictions give the curve
    (score ``curve``, :data:`~splml.methods.adagc.indicator.CURVE_SCORES`); ``snapshot_every``
    is the interval of the rollback snapshots. Checkpointed state: the curve, the decision, the
    epochs rolled back and the list of snapshots.
    """

    def __init__(
        self, source: DualEMAStore, rule: StageTrigger | None = None, curve: str = "jaccard", snapshot_every: int = 1
    ) -> None:
        super().__init__()
        if curve not in CURVE_SCORES:
            raise ValueError(f"AdaGC curve must be one of {sorted(CURVE_SCORES)}, got {curve!r}")
        self.source = source
        self.rule = StageTrigger() if rule is None else rule
        self.score = curve
        self.snapshots = TrainingSnapshots(snapshot_every)
        #: Monitored score of every finished warm-up epoch.
        self.curve: list[float] = []
        self.decision: Decision | None = None
        #: Epochs and optimizer steps undone by the rollback (the loop is that much longer than its limits).
        self.epochs_undone = 0
        self.steps_undone = 0
        self._trainer: L.Trainer | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__

    @property
    def trigger_epoch(self) -> int | None:
        return None if self.decision is None else self.decision.trigger_epoch

    def stage(self, epoch: int) -> str:
        """``gc`` from the epoch the warm-up ended (counted in epochs run), ``warmup`` before."""
        return "gc" if self.decision is not None and epoch >= self.decision.decided_at else "warmup"

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        decision = None if self.decision is None else vars(self.decision).copy()
        return {"curve": list(self.curve), "decision": decision, "epochs_undone": self.epochs_undone,
                "steps_undone": self.steps_undone, "trigger": self.rule.trigger,
                "snapshots": self.snapshots.state_dict()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "decision" not in state_dict:
            raise ValueError(
                "EarlyLearningStageSwitch: this checkpoint was written by an earlier AdaGC version (no 'decision'); "
                "it can be evaluated but not resumed"
            )
        self.curve = [float(v) for v in state_dict["curve"]]
        decision = state_dict["decision"]
        self.decision = None if decision is None else Decision(**decision)
        self.epochs_undone = int(state_dict["epochs_undone"])
        # Checkpoints written before steps were counted come from runs that could not set
        # trainer.max_steps with a rollback, so no step limit needs lengthening for them.
        self.steps_undone = int(state_dict.get("steps_undone", 0))
        # Testing a checkpoint restores this state too; only a resumed fit may still roll back.
        fitting = self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING
        self.snapshots.load_state_dict(
            state_dict["snapshots"], self._trainer, needed=fitting and self.decision is None and self.rule.rolls_back
        )

    # -- the loop -----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit" and self.rule.rolls_back:
            self.snapshots.attach(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the optimizers and their schedule were built for the nominal length (strategy setup).
        self._lengthen(trainer, self.epochs_undone, self.steps_undone)

    @staticmethod
    def _lengthen(trainer: L.Trainer, epochs: int, steps: int) -> None:
        """Let the loop run ``epochs`` more epochs and ``steps`` more optimizer steps (limits that are set)."""
        loop = trainer.fit_loop
        if loop.max_epochs is not None and loop.max_epochs >= 0:
            loop.max_epochs = int(loop.max_epochs) + epochs
        if loop.max_steps is not None and loop.max_steps >= 0:
            loop.epoch_loop.max_steps = int(loop.max_steps) + steps

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.decision is not None:
            if trainer.current_epoch > self.decision.decided_at:
                # The epoch of the decision has been checkpointed: no resume needs a snapshot any more.
                self.snapshots.clear(trainer)
            return
        epoch = int(trainer.current_epoch)
        while len(self.curve) < epoch:  # the finished warm-up epochs not yet in the curve
            self.curve.append(self.source.curve_value(len(self.curve), self.score))
        decision = self.rule.decide(self.curve)
        if decision is not None:
            self._end_warmup(trainer, pl_module, decision)
        elif self.rule.rolls_back and self.snapshots.due(epoch):
            self.snapshots.capture(trainer, pl_module, epoch)

    def _end_warmup(self, trainer: L.Trainer, pl_module: L.LightningModule, decision: Decision) -> None:
        epoch = int(trainer.current_epoch)
        trigger = decision.trigger_epoch
        if self.rule.rolls_back and trigger < epoch and not self.snapshots.epochs:
            log.warning(
                "AdaGC: trigger epoch %d, but no snapshot was taken before the decision after %d epochs "
                "(loss.snapshot_every=%d): corrections start now, without a rollback",
                trigger, epoch, self.snapshots.every,
            )  # fmt: skip
            trigger = epoch
        if self.rule.rolls_back and trigger < epoch:
            trigger = self.snapshots.nearest(trigger)
            step = int(trainer.global_step)
            self.epochs_undone = epoch - trigger
            self.steps_undone = step - self.snapshots.restore(trainer, pl_module, trigger)
            self._lengthen(trainer, self.epochs_undone, self.steps_undone)
            log.info(
                "AdaGC: end of the warm-up detected after %d epochs; rolled back to the state after epoch %d; "
                "the run now ends after %d epochs", epoch, trigger, trainer.fit_loop.max_epochs,
            )  # fmt: skip
        self.decision = Decision(epoch, trigger, decision.detection)
        values = {
            "adagc/trigger_epoch": trigger,
            "adagc/decided_at": epoch,
            "adagc/epochs_rolled_back": self.epochs_undone,
        }
        found = decision.detection
        if found is not None:
            values.update({"adagc/dep": found["dep"], "adagc/mid": found["mid"]})
            values.update({f"adagc/vote_w{ws}": vote for ws, vote in found["votes"].items()})
            if found["fit"] is not None:
                values.update({f"adagc/fit_{k}": v for k, v in zip("abc", found["fit"], strict=True)})
        pl_module.log_dict({k: float(v) for k, v in values.items()}, on_step=False, on_epoch=True, sync_dist=False)
        self.draw(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        batch.setdefault("extras", {})["adagc_stage"] = self.stage(int(trainer.current_epoch))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        values = {"adagc/gc_stage": 1.0 if self.stage(epoch) == "gc" else 0.0}
        if self.stage(epoch) == "warmup":
            values["adagc/curve"] = self.source.curve_value(epoch, self.score)
        pl_module.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, on_epoch=True, sync_dist=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only a run that reached its last epoch is never resumed; one stopped earlier (should_stop,
        # a time limit) may be, and may still need its snapshots for a pending rollback.
        if trainer.current_epoch >= int(trainer.fit_loop.max_epochs):
            self.snapshots.clear(trainer)
        if self.decision is None:
            self.draw(trainer)

    # -- figure -----------------------------------------------------------------------------
    def draw(self, trainer: L.Trainer) -> Path | None:
        """``adagc_trigger.png`` in the run folder (rank 0): the curve, the fit, the votes and the trigger."""
        if not trainer.is_global_zero or not self.curve:
            return None
        out = Path(trainer.default_root_dir) / FIGURE
        plot_trigger(self.curve, self.rule.trigger, self.decision, out, score=self.score,
                     window_sizes=self.rule.window_sizes)  # fmt: skip
        log_figure(trainer, "adagc_trigger", out)
        return out
