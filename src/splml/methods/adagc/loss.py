"""AdaGC: adaptive gradient calibration for single-positive multi-label learning (RECONSTRUCTION).

AdaGC's paper body and official code could not be consulted. What its published summary says:
two stages; an early-learning detection indicator that triggers gradient calibration (GC) after a
warm-up, from the training dynamics; a dual-EMA module for robust pseudo-labels ("temporal
prediction fusion"); Mixup within GC. The missing pieces come from its first author's earlier
method for incomplete labels in remote sensing, AIO2 (IEEE TGRS 2024, public code
``zhu-xlab/AIO2``; the facts used are listed in ``specs/methods.md``, AdaGC), and where neither
says, the choice is this suite's and is stated where it is made. The parts, each switchable:

1. warm-up stage: plain AN (every unknown label trained towards 0);
2. end of the warm-up (:class:`~splml.methods.adagc.switch.EarlyLearningStageSwitch`): AIO2's
   detection of the transition stage on the per-step teacher's training score against the
   observed labels, then a **rollback** of student, teachers, optimizer, schedule and every
   per-sample store to the trigger epoch (``trigger: aio2``, from AIO2); the earlier knee rule
   without rollback (``trigger: knee``) and a fixed epoch (``trigger: fixed``) are variants;
3. dual EMA (:class:`~splml.methods.adagc.store.DualEMAStore`): a weight-EMA teacher updated every
   step and one updated every epoch (AIO2's two EMAs), whose probabilities are averaged (ours);
   ``epoch_teacher: false`` keeps the per-step one alone; ``pseudo_labels: temporal_ema`` replaces
   the online predictions by a per-sample temporal EMA of them (the earlier choice, a variant);
4. gradient calibration (GC stage): unknown entries are trained towards the pseudo-label instead
   of towards 0 (:func:`gradient_calibration_loss`); by default the pseudo-label is the correction
   ``1[teacher probability > 0.5]`` (AIO2's online correction: observed labels plus the teacher's
   confident predictions), ``correction_threshold: null`` keeps it soft; ``gc: false`` trains AN
   in the corrected stage too (the ablation of GC itself);
5. Mixup inside the GC stage (``mixup: false`` to ablate): images and the (observed + pseudo)
   targets mixed with the same permutation and lambda -- :class:`~splml.methods.adagc.mixup.GCMixup`.

Stage and pseudo-labels reach the loss through ``batch["extras"]``: ``adagc_stage``
(``"warmup"``/``"gc"``), ``adagc_pseudo`` (float B x L in the GC stage: the teachers' mean
probability on the batch, or the temporal EMA rows before this step's update) and, on mixed GC
batches, ``mixup`` (``{"perm": long B, "lam": float}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from splml.methods.adagc.indicator import CURVE_SCORES
from splml.methods.adagc.mixup import GCMixup
from splml.methods.adagc.store import DualEMAStore
from splml.methods.adagc.switch import EarlyLearningStageSwitch, StageTrigger
from splml.methods.an import assume_negative_loss
from splml.methods.base import (
    LossContext,
    SPMLLoss,
    annotated_negative_mask,
    neg_log,
    observed_positive_mask,
    require_extra,
    soft_bce,
    unknown_mask,
)
from splml.methods.papers import ADAGC_2025
from splml.methods.registry import register_method

STAGES = ("warmup", "gc")


def calibrate_pseudo_labels(
    pseudo: Tensor, threshold: float | None = None, sharpen: float | None = None, correction: float | None = None
) -> Tensor:
    """The target ``t'`` used for unknown entries, from the raw dual-EMA pseudo-label ``t``.

    * ``correction`` (AIO2's correction, the default 0.5): ``t' = 1[t > correction]`` -- the
      unknown entries the teachers are confident about become positives, the others stay AN's
      negatives. Exclusive with the two soft options below.
    * ``threshold`` (confidence threshold): entries with ``t < threshold`` keep AN's target 0, so
      only pseudo-labels the EMA is confident about move the gradient away from AN's. It is
      applied to the raw ``t`` (the confidence of the estimate), before any sharpening.
    * ``sharpen`` (temperature ``T``): ``t' = t^(1/T) / (t^(1/T) + (1 - t)^(1/T))``, the binary
      form of the usual distribution sharpening; ``T < 1`` pushes ``t`` towards 0 or 1, ``T = 1``
      changes nothing, and 0.5 stays 0.5.

    The summary only says "confidence threshold / sharpening"; these exact forms are our choice.
    """
    t = pseudo.detach().clamp(0.0, 1.0)
    if correction is not None:
        if threshold is not None or sharpen is not None:
            raise ValueError("AdaGC's hard correction excludes threshold/sharpen (set correction_threshold: null)")
        return (t > correction).to(t.dtype)
    if threshold is not None:
        t = torch.where(t >= threshold, t, torch.zeros_like(t))
    if sharpen is not None:
        if sharpen <= 0:
            raise ValueError(f"sharpening temperature must be > 0, got {sharpen}")
        up, down = t.pow(1.0 / sharpen), (1 - t).pow(1.0 / sharpen)
        t = up / (up + down)  # up + down >= 1 for t in [0, 1]: never 0
    return t


def calibrated_targets(observed: Tensor, pseudo_targets: Tensor | None, weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-entry ``(target, weight)`` of the GC loss (or of AN when ``pseudo_targets`` is None).

    Annotated positives: target 1, weight 1; annotated negatives: target 0, weight 1; unknown
    entries: the (already calibrated) pseudo-label with weight ``weight`` -- or target 0 and
    weight 1 without pseudo-labels, which is exactly AN. Mixup mixes these two matrices.
    """
    pos = observed_positive_mask(observed)
    unk = unknown_mask(observed)
    if pseudo_targets is None:
        return pos.to(observed.dtype), torch.ones_like(observed)
    target = torch.where(pos, torch.ones_like(observed), torch.zeros_like(observed))
    target = torch.where(unk, pseudo_targets.to(observed.dtype), target)
    weights = torch.where(unk, torch.full_like(observed, float(weight)), torch.ones_like(observed))
    return target, weights


def gradient_calibration_loss(
    probs: Tensor,
    observed: Tensor,
    pseudo_targets: Tensor,
    weight: float = 1.0,
    threshold: float | None = None,
    sharpen: float | None = None,
) -> Tensor:
    """GC-stage loss of AdaGC, mean over B x L (reconstruction from the published summary)::

        z = 1  : -log p
        z = 0  : lambda * [ t' * -log p + (1 - t') * -log(1 - p) ],  t' = calibrate(t)
        z = -1 : -log(1 - p)

    ``t`` is the dual-EMA pseudo-label (``pseudo_targets``), ``t'`` the thresholded/sharpened one
    (:func:`calibrate_pseudo_labels`), ``lambda = weight``. Why this is "gradient calibration":
    with respect to the logit the unknown-entry gradient is ``lambda * (p - t')`` instead of AN's
    ``p``, i.e. the push towards 0 that AN applies to every unknown label (and which memorises
    the false negatives) is re-centred on the model's own slowly-moving estimate. Logs use
    ``-log(x + 1e-5)`` like the rest of the suite, so the gradient is ``p - t'`` up to that floor.
    """
    t = calibrate_pseudo_labels(pseudo_targets, threshold, sharpen)
    pos = observed_positive_mask(observed)
    unk = unknown_mask(observed)
    neg = annotated_negative_mask(observed)
    loss = pos * neg_log(probs) + unk * (weight * soft_bce(probs, t)) + neg * neg_log(1 - probs)
    return loss.mean()


def mix_rows(values: Tensor, perm: Tensor, lam: float) -> Tensor:
    """``lam * v + (1 - lam) * v[perm]``: how Mixup combines a batch with its permutation."""
    return lam * values + (1 - lam) * values[perm.to(values.device)]


def mixed_target_loss(probs: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Soft BCE over every entry against already-mixed targets, mean over B x L.

    After Mixup an entry mixes two samples' labels, so the "observed / unknown / negative" split
    of :func:`gradient_calibration_loss` no longer exists per entry; what remains is a soft
    target and, when lambda != 1, a mixed weight (both mixed with the images' permutation).
    Without Mixup (``lam = 1``) this equals :func:`gradient_calibration_loss` exactly.
    """
    loss = soft_bce(probs, targets.detach())
    if weights is not None:
        loss = loss * weights.detach()
    return loss.mean()


@register_method(
    "adagc",
    title="AdaGC",
    summary=(
        "AN warm-up, end of the transition detected as in AIO2 with a rollback to it, dual-EMA teacher corrections, "
        "gradient calibration + Mixup"
    ),
    paper=ADAGC_2025,
    formula=(
        "warm-up: AN; GC stage (after the rollback): z=1: -log p; z=0: lambda BCE(p, t'), t' = 1[mean teacher "
        "probability > 0.5]; z=-1: -log(1-p)"
    ),
    stores=(EarlyLearningStageSwitch, DualEMAStore),
    ablations=(
        "adagc_knee_trigger",
        "adagc_fixed_trigger",
        "adagc_temporal_ema",
        "adagc_single_ema",
        "adagc_no_mixup",
        "adagc_no_gc",
    ),
    reconstruction=True,
)
class AdaGCLoss(SPMLLoss):
    """AdaGC (reconstruction): AN during warm-up, gradient calibration with Mixup after the (rolled-back) trigger.

    The stage is decided by :class:`~splml.methods.adagc.switch.EarlyLearningStageSwitch`, never by
    the loss (so a resumed run switches, and rolls back, at the same epoch); the pseudo-labels come
    from :class:`~splml.methods.adagc.store.DualEMAStore`; Mixup by
    :class:`~splml.methods.adagc.mixup.GCMixup`. Every constructor option is in
    ``conf/loss/adagc.yaml``; the ones that only configure the callbacks are passed on by
    :meth:`callbacks`, and each is checked once, when the loss is built, by the part it configures.
    """

    name = "adagc"
    requires_extras = ("adagc_stage", "adagc_pseudo")

    def __init__(
        self,
        trigger: str = "aio2",
        window_sizes: Sequence[int] = (2, 3, 4),
        curve: str = "jaccard",
        snapshot_every: int = 1,
        fixed_epoch: int = 5,
        fixed_decided_at: int | None = None,
        min_warmup: int = 2,
        max_warmup: int = 10,
        window: int = 3,
        teacher_momentum: float = 0.999,
        epoch_teacher: bool = True,
        epoch_teacher_momentum: float = 0.99,
        teacher_ramp: bool = True,
        pseudo_labels: str = "teacher",
        temporal_momentum: float = 0.7,
        correction_threshold: float | None = 0.5,
        gc: bool = True,
        gc_weight: float = 1.0,
        threshold: float | None = None,
        sharpen: float | None = None,
        mixup: bool = True,
        mixup_alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.stage_trigger = StageTrigger(
            trigger, tuple(window_sizes), fixed_epoch, fixed_decided_at, min_warmup, max_warmup, window
        )
        if curve not in CURVE_SCORES:
            raise ValueError(f"AdaGC curve must be one of {sorted(CURVE_SCORES)}, got {curve!r}")
        if int(snapshot_every) < 1:
            raise ValueError(f"AdaGC snapshot_every must be >= 1 epoch, got {snapshot_every}")
        DualEMAStore.check_options(teacher_momentum, epoch_teacher_momentum, pseudo_labels, temporal_momentum)
        self.mixup_callback = GCMixup(alpha=mixup_alpha, seed=seed) if mixup else None
        if correction_threshold is not None and not 0 < correction_threshold < 1:
            raise ValueError(f"AdaGC correction_threshold must be in (0, 1) or null, got {correction_threshold}")
        if correction_threshold is not None and (threshold is not None or sharpen is not None):
            raise ValueError(
                "AdaGC's threshold and sharpen shape soft pseudo-labels; set correction_threshold: null to use them"
            )
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"pseudo-label threshold must be in [0, 1], got {threshold}")
        if sharpen is not None and sharpen <= 0:
            raise ValueError(f"sharpening temperature must be > 0, got {sharpen}")
        self.curve, self.snapshot_every = curve, int(snapshot_every)
        self.store_options = {
            "teacher_momentum": float(teacher_momentum), "epoch_teacher": bool(epoch_teacher),
            "epoch_teacher_momentum": float(epoch_teacher_momentum), "teacher_ramp": bool(teacher_ramp),
            "pseudo_labels": pseudo_labels, "temporal_momentum": float(temporal_momentum),
        }  # fmt: skip
        self.correction_threshold = None if correction_threshold is None else float(correction_threshold)
        self.gc, self.mixup = bool(gc), bool(mixup)
        self.gc_weight = float(gc_weight)
        self.threshold = None if threshold is None else float(threshold)
        self.sharpen = None if sharpen is None else float(sharpen)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        """Stage switch, dual-EMA store and (if on) Mixup -- in this order, which matters.

        Lightning runs callbacks in list order: the switch rolls back before any other callback's
        epoch-start work and attaches the stage that the store and Mixup read; the store predicts
        the clean images before Mixup replaces them.
        """
        store = DualEMAStore(num_samples, num_classes, **self.store_options)
        switch = EarlyLearningStageSwitch(store, self.stage_trigger, self.curve, self.snapshot_every)
        callbacks: list[Any] = [switch, store]
        if self.mixup_callback is not None:
            callbacks.append(self.mixup_callback)
        return callbacks

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        stage = require_extra(batch, "adagc_stage", self.name)
        if stage not in STAGES:
            raise ValueError(f"adagc_stage must be one of {STAGES}, got {stage!r}")
        observed = batch["observed"]
        probs = outputs["logits"].sigmoid()
        mix = (batch.get("extras") or {}).get("mixup")
        if stage == "gc" and self.mixup and mix is None:
            raise RuntimeError("AdaGC has mixup=true but the GC batch carries no extras['mixup']; is GCMixup missing?")

        unk = unknown_mask(observed)
        if stage == "gc" and self.gc:
            pseudo = calibrate_pseudo_labels(
                require_extra(batch, "adagc_pseudo", self.name), self.threshold, self.sharpen, self.correction_threshold
            )
            pseudo_positive = unk & (pseudo > 0.5)
        else:
            pseudo = None
            pseudo_positive = torch.zeros_like(unk)

        if mix is not None:
            targets, weights = calibrated_targets(observed, pseudo, self.gc_weight)
            lam = float(mix["lam"])
            loss = mixed_target_loss(probs, mix_rows(targets, mix["perm"], lam), mix_rows(weights, mix["perm"], lam))
        elif pseudo is not None:
            # Already calibrated above: threshold/sharpen must not be applied a second time.
            loss = gradient_calibration_loss(probs, observed, pseudo, self.gc_weight)
        else:
            loss = assume_negative_loss(probs, observed)

        zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
        logs: dict[str, Tensor] = {
            "loss": loss,
            "gc_stage": torch.ones_like(zero) if stage == "gc" else zero,
            "pseudo_positive_mask": pseudo_positive.detach(),
        }
        if pseudo is not None:
            # Mean pseudo-label over the unknown entries, without a host sync (no boolean indexing).
            mean = (pseudo * unk).sum() / unk.sum().clamp(min=1)
            logs["pseudo_mean"] = mean.detach().to(loss.dtype)
        if mix is not None:
            logs["mixup_lambda"] = torch.tensor(float(mix["lam"]), dtype=loss.dtype, device=loss.device)
        return logs
