"""AdaGC: adaptive gradient calibration for single-positive multi-label learning (RECONSTRUCTION).

The paper body and its official code could not be consulted; this module rebuilds the method
from its published summary only (``specs/methods.md``, "AdaGC"), so every detail below that the
summary does not fix is a choice of this suite, stated where it is made. The method has five
parts, each switchable so that the ablations can be run:

1. warm-up stage: plain AN (every unknown label trained towards 0);
2. stage switch at the end of the early-learning phase, detected from the training agreement of
   the teacher's predictions with the observed labels (``trigger: adaptive``) or at a fixed
   epoch (``trigger: fixed``) -- :class:`~splml.methods.adagc.switch.EarlyLearningStageSwitch` with
   its :class:`~splml.methods.adagc.switch.StageTrigger`;
3. dual EMA pseudo-labels: a weight-EMA teacher of the model and a per-sample temporal EMA of
   its predictions (``dual_ema: false`` = the student's own per-sample EMA, no teacher) --
   :class:`~splml.methods.adagc.store.DualEMAStore` (teacher: :mod:`splml.methods.adagc.teacher`);
4. gradient calibration (GC stage): unknown entries are trained towards the pseudo-label instead
   of towards 0 (:func:`gradient_calibration_loss`);
5. Mixup inside the GC stage (``mixup: false`` to ablate): images and the (observed + pseudo)
   targets mixed with the same permutation and lambda -- :class:`~splml.methods.adagc.mixup.GCMixup`.

Stage and pseudo-labels reach the loss through ``batch["extras"]``: ``adagc_stage``
(``"warmup"``/``"gc"``), ``adagc_pseudo`` (float B x L, the temporal EMA rows before this step's
update) and, on mixed GC batches, ``mixup`` (``{"perm": long B, "lam": float}``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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


def calibrate_pseudo_labels(pseudo: Tensor, threshold: float | None = None, sharpen: float | None = None) -> Tensor:
    """The target ``t'`` used for unknown entries, from the raw dual-EMA pseudo-label ``t``.

    * ``threshold`` (confidence threshold): entries with ``t < threshold`` keep AN's target 0, so
      only pseudo-labels the EMA is confident about move the gradient away from AN's. It is
      applied to the raw ``t`` (the confidence of the estimate), before any sharpening.
    * ``sharpen`` (temperature ``T``): ``t' = t^(1/T) / (t^(1/T) + (1 - t)^(1/T))``, the binary
      form of the usual distribution sharpening; ``T < 1`` pushes ``t`` towards 0 or 1, ``T = 1``
      changes nothing, and 0.5 stays 0.5.

    The summary only says "confidence threshold / sharpening"; these exact forms are our choice.
    """
    t = pseudo.detach().clamp(0.0, 1.0)
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
    summary=("AN warm-up, detected end of early learning, dual-EMA pseudo-labels, gradient calibration + Mixup"),
    paper=ADAGC_2025,
    formula="warm-up: AN; GC stage: z=1: -log p; z=0: lambda BCE(p, t'), t' = calibrated dual-EMA pseudo-label; z=-1: -log(1-p)",
    stores=(EarlyLearningStageSwitch, DualEMAStore),
    ablations=("adagc_fixed_trigger", "adagc_single_ema", "adagc_no_mixup", "adagc_teacher_every4"),
    reconstruction=True,
)
class AdaGCLoss(SPMLLoss):
    """AdaGC (reconstruction): AN during warm-up, gradient calibration with Mixup afterwards.

    The stage is decided by :class:`~splml.methods.adagc.switch.EarlyLearningStageSwitch`, never by
    the loss (so a resumed run switches at the same epoch); the pseudo-labels come from
    :class:`~splml.methods.adagc.store.DualEMAStore`; Mixup by
    :class:`~splml.methods.adagc.mixup.GCMixup`. Every constructor option is in
    ``conf/loss/adagc.yaml``; the ones that only configure the callbacks are passed on by
    :meth:`callbacks`, and each is checked once, by the part it configures (the trigger options by
    :class:`~splml.methods.adagc.switch.StageTrigger`, here when the loss is built).
    """

    name = "adagc"
    requires_extras = ("adagc_stage", "adagc_pseudo")

    def __init__(
        self,
        trigger: str = "adaptive",
        fixed_epoch: int = 5,
        min_warmup: int = 2,
        max_warmup: int = 10,
        window: int = 3,
        dual_ema: bool = True,
        teacher_momentum: float = 0.999,
        teacher_ramp: bool = True,
        temporal_momentum: float = 0.7,
        teacher_every: int = 1,
        mixup: bool = True,
        mixup_alpha: float = 1.0,
        gc_weight: float = 1.0,
        threshold: float | None = None,
        sharpen: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.stage_trigger = StageTrigger(trigger, fixed_epoch, min_warmup, max_warmup, window)
        DualEMAStore.check_options(teacher_momentum, temporal_momentum, teacher_every)
        self.mixup_callback = GCMixup(alpha=mixup_alpha, seed=seed) if mixup else None
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"pseudo-label threshold must be in [0, 1], got {threshold}")
        if sharpen is not None and sharpen <= 0:
            raise ValueError(f"sharpening temperature must be > 0, got {sharpen}")
        self.dual_ema = bool(dual_ema)
        self.teacher_momentum, self.teacher_ramp = float(teacher_momentum), bool(teacher_ramp)
        self.temporal_momentum = float(temporal_momentum)
        self.teacher_every = int(teacher_every)
        self.mixup = bool(mixup)
        self.gc_weight = float(gc_weight)
        self.threshold = None if threshold is None else float(threshold)
        self.sharpen = None if sharpen is None else float(sharpen)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        """Stage switch, dual-EMA store and (if on) Mixup -- in this order, which matters.

        Lightning runs callbacks in list order: the switch attaches the stage that the Mixup
        callback reads, and the store reads the clean images Mixup leaves in the batch.
        """
        store = DualEMAStore(
            num_samples, num_classes, dual_ema=self.dual_ema, teacher_momentum=self.teacher_momentum,
            teacher_ramp=self.teacher_ramp, temporal_momentum=self.temporal_momentum, teacher_every=self.teacher_every,
        )  # fmt: skip
        switch = EarlyLearningStageSwitch(store, self.stage_trigger)
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
        if stage == "gc":
            pseudo = calibrate_pseudo_labels(
                require_extra(batch, "adagc_pseudo", self.name), self.threshold, self.sharpen
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
