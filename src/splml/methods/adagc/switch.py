"""AdaGC's stage switch: when the AN warm-up ends and gradient calibration starts (RECONSTRUCTION).

The end of the early-learning phase is detected from an indicator recorded once per epoch (the
macro AP of the teacher's predictions against the observed labels,
:func:`~splml.methods.adagc.indicator.early_learning_indicator`): a saturating curve is fitted to
it and the switch fires after its knee (:func:`~splml.methods.adagc.indicator.early_learning_has_ended`),
within ``[min_warmup, max_warmup]`` (``trigger: adaptive``), or at a fixed epoch (``trigger: fixed``,
the ablation). :class:`StageTrigger` holds and checks these options; :class:`EarlyLearningStageSwitch`
is the callback that applies them during training and tags every batch with ``extras["adagc_stage"]``.
See :mod:`splml.methods.adagc.loss` for the method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L

from splml.methods.adagc.indicator import early_learning_has_ended
from splml.methods.adagc.store import DualEMAStore

#: The two ways the warm-up can end.
TRIGGERS = ("adaptive", "fixed")

# -- the trigger ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTrigger:
    """When the warm-up ends; the trigger options of AdaGC, checked here once.

    ``trigger="adaptive"``: the first epoch ``n`` with ``min_warmup <= n`` at which
    :func:`early_learning_has_ended` holds for the indicator of the ``n`` finished epochs, and
    ``max_warmup`` at the latest; ``window`` is the epochs of the raw-curve slope check.
    ``trigger="fixed"``: GC from epoch ``fixed_epoch`` (0-based).
    """

    trigger: str = "adaptive"
    fixed_epoch: int = 5
    min_warmup: int = 2
    max_warmup: int = 10
    window: int = 3

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"AdaGC trigger must be 'adaptive' or 'fixed', got {self.trigger!r}")
        if not 0 <= self.min_warmup <= self.max_warmup:
            raise ValueError(f"AdaGC needs 0 <= min_warmup <= max_warmup, got {self.min_warmup}, {self.max_warmup}")
        if self.window < 2:
            raise ValueError(f"AdaGC slope window must be >= 2 epochs, got {self.window}")
        for key in ("fixed_epoch", "min_warmup", "max_warmup", "window"):
            object.__setattr__(self, key, int(getattr(self, key)))

    def first_gc_epoch(self, curve: Sequence[float]) -> int | None:
        """The first epoch to train with GC, given the indicator of epochs ``0..len(curve)-1`` (adaptive rule).

        Replays the online rule over the prefixes of ``curve``: after ``n`` finished epochs
        (``min_warmup <= n``) the switch happens at epoch ``n`` if :func:`early_learning_has_ended`
        holds for ``curve[:n]``; at ``n = max_warmup`` it happens regardless. Returns None while
        neither has happened, so a training run calling it after every epoch switches at the first
        epoch it returns, and calling it on a whole recorded curve tells which epoch that was.
        """
        for n in range(self.min_warmup, min(len(curve), self.max_warmup) + 1):
            if n >= self.max_warmup or early_learning_has_ended(curve[:n], self.window, horizon=self.max_warmup):
                return n
        return None

    def should_switch(self, epoch: int, curve: Sequence[float]) -> bool:
        """Whether GC starts at ``epoch`` given the indicator of the epochs before it."""
        if self.trigger == "fixed":
            return epoch >= self.fixed_epoch
        return self.first_gc_epoch(curve[:epoch]) is not None


def detect_end_of_early_learning(curve: Sequence[float], min_warmup: int, max_warmup: int, window: int) -> int | None:
    """:meth:`StageTrigger.first_gc_epoch` of the adaptive trigger with these options."""
    return StageTrigger("adaptive", min_warmup=min_warmup, max_warmup=max_warmup, window=window).first_gc_epoch(curve)


class EarlyLearningStageSwitch(L.Callback):
    """Ends the AN warm-up at the end of early learning (or at a fixed epoch) and tags batches.

    Indicator: :func:`~splml.methods.adagc.indicator.early_learning_indicator` of the predictions ``source`` (the
    :class:`DualEMAStore`) recorded during each epoch. Lightning writes the epoch's checkpoint at
    the end of validation, before ``on_train_epoch_end``; so the indicator is only *logged* at
    epoch end (``adagc/indicator``, ``adagc/gc_stage``), while it is *recorded* in the curve and
    the switch is *decided* at the start of the next epoch, from the store's checkpointed
    predictions. The curve's length is the epoch marker that makes this idempotent, and the curve
    and the decision are this callback's checkpointed state: a resumed run switches at the same
    epoch as an uninterrupted one. ``adagc/trigger_epoch`` is logged once, when it is decided.

    When the switch happens is the :class:`StageTrigger` ``rule`` (adaptive or fixed).
    """

    def __init__(self, source: DualEMAStore, rule: StageTrigger | None = None) -> None:
        super().__init__()
        self.source = source
        self.rule = StageTrigger() if rule is None else rule
        #: Indicator of every finished epoch (NaN where no prediction was recorded).
        self.curve: list[float] = []
        #: First epoch trained with GC, once decided.
        self.trigger_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {"curve": list(self.curve), "trigger_epoch": self.trigger_epoch, "trigger": self.rule.trigger}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [float(v) for v in state_dict["curve"]]
        self.trigger_epoch = None if state_dict["trigger_epoch"] is None else int(state_dict["trigger_epoch"])

    def stage(self, epoch: int) -> str:
        return "gc" if self.trigger_epoch is not None and epoch >= self.trigger_epoch else "warmup"

    def should_switch(self, epoch: int) -> bool:
        """Whether GC starts at ``epoch`` given the curve of the epochs before it."""
        return self.rule.should_switch(epoch, self.curve)

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
