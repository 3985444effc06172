"""AdaGC (reconstruction): trigger detection, GC loss, Mixup targets, dual EMA, checkpoints, resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from torch import nn

from splml.builders import config_dir, register_resolvers
from splml.methods.adagc.indicator import early_learning_indicator
from splml.methods.adagc.loss import (
    AdaGCLoss,
    calibrate_pseudo_labels,
    calibrated_targets,
    gradient_calibration_loss,
    mixed_target_loss,
)
from splml.methods.adagc.mixup import GCMixup
from splml.methods.adagc.store import DualEMAStore
from splml.methods.adagc.switch import EarlyLearningStageSwitch, StageTrigger, detect_end_of_early_learning
from splml.methods.adagc.teacher import EMATeacher, teacher_momentum_at
from splml.methods.an import assume_negative_loss
from splml.methods.base import LossContext
from splml.train import train

from ...helpers import compose_train

# -- trigger detection -----------------------------------------------------------------------------


def indicator_curve(rate: float, epochs: int = 20, rise_from: int = 11, noise: float = 0.0) -> np.ndarray:
    """Fast rise (early learning), plateau, then a second rise (memorising false negatives)."""
    e = np.arange(epochs, dtype=np.float64)
    y = 20 + 40 * (1 - np.exp(-rate * (e + 1))) + 1.5 * np.clip(e - rise_from, 0, None)
    return y + noise * np.random.default_rng(0).standard_normal(epochs)


def test_trigger_fires_after_the_knee_and_before_the_second_rise():
    for noise in (0.0, 0.8):
        epoch = detect_end_of_early_learning(indicator_curve(0.6, noise=noise), min_warmup=2, max_warmup=15, window=3)
        assert epoch is not None and 5 <= epoch <= 9, (noise, epoch)
    # Faster early learning ends earlier; the rule follows the curve, not a fixed count.
    fast = detect_end_of_early_learning(indicator_curve(1.2), 2, 15, 3)
    slow = detect_end_of_early_learning(indicator_curve(0.3), 2, 15, 3)
    assert fast is not None and slow is not None and fast < slow <= 11


def test_trigger_is_online_bounded_and_robust():
    curve = indicator_curve(0.6)
    epoch = detect_end_of_early_learning(curve, 2, 15, 3)
    assert epoch is not None
    # Online: the prefixes before the trigger epoch do not fire, the prefix up to it does.
    assert detect_end_of_early_learning(curve[: epoch - 1], 2, 15, 3) is None
    assert detect_end_of_early_learning(curve[:epoch], 2, 15, 3) == epoch
    # Never before min_warmup, even on a plateau reached long before.
    assert detect_end_of_early_learning(curve, min_warmup=12, max_warmup=15, window=3) == 12
    # A curve still rising steadily never shows the end of early learning: forced at max_warmup,
    # and undecided while fewer epochs than that are known.
    linear = np.arange(20) * 2.0
    assert detect_end_of_early_learning(linear, 2, 7, 3) == 7
    assert detect_end_of_early_learning(linear[:6], 2, 7, 3) is None
    # Missing epochs (NaN) and unusable curves fall back to the forced switch, never crash.
    assert detect_end_of_early_learning([math.nan] * 10, 2, 6, 3) == 6
    gappy = curve.copy()
    gappy[3] = math.nan
    assert detect_end_of_early_learning(gappy, 2, 15, 3) is not None
    with pytest.raises(ValueError):
        detect_end_of_early_learning(curve, 5, 3, 3)


def test_indicator_is_macro_ap_against_the_observed_labels():
    annotated = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 0]], dtype=torch.bool)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4], [0.4, 0.3]])
    # class 0: positives ranked 1st and 3rd -> AP = (1 + 2/3) / 2; class 1: 1st -> AP = 1
    assert early_learning_indicator(probs, annotated) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
    assert math.isnan(early_learning_indicator(probs[:0], annotated[:0]))


# -- losses ----------------------------------------------------------------------------------------


def logits_of(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return (torch.log(p) - torch.log1p(-p)).requires_grad_(True)


def test_gc_gradient_on_unknown_entries_points_to_the_pseudo_label():
    observed = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, -1]], dtype=torch.float64)
    p = [[0.6, 0.3, 0.8, 0.5], [0.2, 0.7, 0.1, 0.4]]
    t = torch.tensor([[0.0, 0.9, 0.2, 0.5], [0.6, 0.0, 0.05, 0.9]], dtype=torch.float64)
    logits = logits_of(p)
    gradient_calibration_loss(logits.sigmoid(), observed, t, weight=2.0).backward()
    grad, probs = logits.grad, torch.tensor(p, dtype=torch.float64)
    unknown = observed == 0
    # d loss / d logit = weight * (p - t) / (B L) on unknown entries (up to the 1e-5 log floor).
    torch.testing.assert_close(grad[unknown], (2.0 * (probs - t) / 8)[unknown], atol=1e-4, rtol=1e-3)
    assert torch.equal(torch.sign(grad[unknown]), torch.sign((probs - t)[unknown]))
    assert grad[0, 0] < 0 and grad[1, 1] < 0, "observed positives are pushed up"
    assert grad[1, 3] > 0, "annotated negatives are pushed down, whatever the pseudo-label"
    # With all pseudo-labels 0 and weight 1 it is exactly AN.
    probs = torch.tensor(p, dtype=torch.float64)
    torch.testing.assert_close(
        gradient_calibration_loss(probs, observed, torch.zeros_like(t)), assume_negative_loss(probs, observed)
    )


def test_threshold_and_sharpening_by_hand():
    t = torch.tensor([0.1, 0.4, 0.5, 0.8])
    torch.testing.assert_close(calibrate_pseudo_labels(t, threshold=0.45), torch.tensor([0.0, 0.0, 0.5, 0.8]))
    sharp = calibrate_pseudo_labels(t, sharpen=0.5)  # t^2 / (t^2 + (1-t)^2)
    expected = [v * v / (v * v + (1 - v) ** 2) for v in (0.1, 0.4, 0.5, 0.8)]
    torch.testing.assert_close(sharp, torch.tensor(expected))
    torch.testing.assert_close(calibrate_pseudo_labels(t, sharpen=1.0), t)


def test_mixup_targets_are_mixed_like_the_images():
    observed = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    pseudo = torch.tensor([[0.0, 0.8, 0.2], [0.6, 0.4, 0.0]])
    probs = torch.tensor([[0.7, 0.6, 0.3], [0.5, 0.2, 0.9]])
    perm, lam, weight = torch.tensor([1, 0]), 0.7, 0.5
    loss = AdaGCLoss(gc_weight=weight)
    batch = {
        "observed": observed,
        "extras": {"adagc_stage": "gc", "adagc_pseudo": pseudo, "mixup": {"perm": perm, "lam": lam}},
    }
    out = loss({"logits": torch.log(probs) - torch.log1p(-probs)}, batch, LossContext())
    # Targets: sample 0 = [1, .8, .2], sample 1 = [.6, .4, 1]; weights: 1 observed, 0.5 unknown.
    t0, t1 = [1, 0.8, 0.2], [0.6, 0.4, 1]
    w0, w1 = [1, 0.5, 0.5], [0.5, 0.5, 1]
    mixed_t = [[lam * a + (1 - lam) * b for a, b in zip(t0, t1)], [lam * b + (1 - lam) * a for a, b in zip(t0, t1)]]
    mixed_w = [[lam * a + (1 - lam) * b for a, b in zip(w0, w1)], [lam * b + (1 - lam) * a for a, b in zip(w0, w1)]]
    total = 0.0
    for i in range(2):
        for j in range(3):
            p, t = float(probs[i, j]), mixed_t[i][j]
            total += mixed_w[i][j] * (-t * math.log(p + 1e-5) - (1 - t) * math.log(1 - p + 1e-5))
    assert float(out["loss"]) == pytest.approx(total / 6, rel=1e-5)
    assert mixed_t[0][0] == pytest.approx(0.88)  # 0.7 * 1 + 0.3 * 0.6
    # Diagnostics: unknown entries with pseudo > 0.5 (of the un-mixed samples).
    assert out["pseudo_positive_mask"].tolist() == [[False, True, False], [True, False, False]]
    assert float(out["mixup_lambda"]) == pytest.approx(lam)
    # lam = 1 reduces to the unmixed GC loss.
    unmixed = mixed_target_loss(probs, *calibrated_targets(observed, pseudo, weight))
    torch.testing.assert_close(unmixed, gradient_calibration_loss(probs, observed, pseudo, weight))


def test_loss_stages_and_misconfiguration():
    observed = torch.tensor([[1.0, 0, 0]])
    probs = torch.tensor([[0.7, 0.6, 0.3]])
    outputs = {"logits": torch.log(probs) - torch.log1p(-probs)}
    pseudo = torch.tensor([[0.0, 0.9, 0.1]])
    loss = AdaGCLoss(mixup=False)
    warm = loss(
        outputs, {"observed": observed, "extras": {"adagc_stage": "warmup", "adagc_pseudo": pseudo}}, LossContext()
    )
    torch.testing.assert_close(warm["loss"], assume_negative_loss(probs, observed))
    assert not warm["pseudo_positive_mask"].any() and float(warm["gc_stage"]) == 0
    gc = loss(outputs, {"observed": observed, "extras": {"adagc_stage": "gc", "adagc_pseudo": pseudo}}, LossContext())
    torch.testing.assert_close(gc["loss"], gradient_calibration_loss(probs, observed, pseudo))
    with pytest.raises(RuntimeError, match="GCMixup"):
        AdaGCLoss(mixup=True)(
            outputs, {"observed": observed, "extras": {"adagc_stage": "gc", "adagc_pseudo": pseudo}}, LossContext()
        )
    names = [type(c).__name__ for c in AdaGCLoss(mixup=True).callbacks(4, 3)]
    assert names == ["EarlyLearningStageSwitch", "DualEMAStore", "GCMixup"]
    assert "GCMixup" not in [type(c).__name__ for c in AdaGCLoss(mixup=False).callbacks(4, 3)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trigger": "sometimes"}, "trigger must be 'adaptive' or 'fixed'"),
        ({"min_warmup": 5, "max_warmup": 3}, "min_warmup <= max_warmup"),
        ({"window": 1}, "window must be >= 2"),
        ({"teacher_every": 0}, "teacher_every must be >= 1"),
        ({"temporal_momentum": 1.0}, "temporal momentum"),
        ({"mixup_alpha": 0.0}, "Mixup alpha must be > 0"),
    ],
)
def test_bad_options_fail_when_the_loss_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        AdaGCLoss(**options)


def test_the_switch_applies_the_trigger_the_loss_checked():
    loss = AdaGCLoss(trigger="fixed", fixed_epoch=3)
    switch, _, mixup = loss.callbacks(4, 3)
    assert switch.rule is loss.stage_trigger and (switch.rule.trigger, switch.rule.fixed_epoch) == ("fixed", 3)
    assert [switch.should_switch(e) for e in (2, 3)] == [False, True]
    assert mixup is loss.callbacks(4, 3)[2], "the Mixup options are checked once too: one callback"


# -- teacher, stores, switch, Mixup (fake trainer) -------------------------------------------------


def test_teacher_ema_arithmetic_and_ramp():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = EMATeacher(student, momentum=0.9, ramp=False)
    assert not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))  # the student moves away from the copy the teacher started as
    student[1].running_mean.fill_(0.25)
    before = [p.detach().clone() for p in teacher.module.parameters()]
    teacher.update(student, step=1)
    for t, t0, s in zip(teacher.module.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())
        # bit for bit the update the suite's numbers were made with: an in-place lerp in the weights' dtype
        assert torch.equal(t, t0.lerp(s.detach(), 1.0 - 0.9))
    assert torch.equal(teacher.module[1].running_mean, student[1].running_mean), "buffers are copied"
    ramped = EMATeacher(student, momentum=0.999)
    ramped.update(student, step=2)
    assert ramped.ema.decay == 0.5, "the ramp min(momentum, 1 - 1/step) is the decay of the step"
    assert [teacher_momentum_at(s, 0.999) for s in (1, 2, 4)] == [0.0, 0.5, 0.75]
    assert teacher_momentum_at(10_000, 0.999) == 0.999 and teacher_momentum_at(1, 0.999, ramp=False) == 0.999


class Net(nn.Module):
    """A tiny model with the suite's output contract and a batch-norm buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.norm(self.linear(image))}


class FakeModule:
    device = torch.device("cpu")

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = Net()
        self.logged: dict[str, float] = {}

    def log(self, name, value, **_):
        self.logged[name] = value

    def log_dict(self, values, **_):
        self.logged.update(values)


OBS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
TRUTH = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=np.float32)


def fake_trainer(epoch: int = 0, step: int = 0):
    train_split = SimpleNamespace(observed=OBS, targets=TRUTH)
    return SimpleNamespace(
        datamodule=SimpleNamespace(datasets={"train": train_split}), current_epoch=epoch, global_step=step,
        global_rank=0, max_epochs=10,
    )  # fmt: skip


def batch_of(idx):
    idx = torch.tensor(idx)
    return {"index": idx, "image": torch.randn(len(idx), 2), "observed": torch.from_numpy(OBS)[idx], "extras": {}}


def test_dual_ema_store_updates_and_checkpoint_round_trip():
    module = FakeModule()
    store = DualEMAStore(4, 3, teacher_momentum=0.5, teacher_ramp=False, temporal_momentum=0.7)
    store.setup(fake_trainer(), module, "fit")
    assert torch.equal(store.tensors["pseudo"], torch.from_numpy(OBS))
    batch = batch_of([0, 2])
    store.on_train_batch_start(fake_trainer(), module, batch, 0)
    assert torch.equal(batch["extras"]["adagc_pseudo"], torch.from_numpy(OBS[[0, 2]]))

    teacher_before = [p.detach().clone() for p in store.teacher.parameters()]
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)  # the "optimizer step"
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch, 0)
    for t, t0, s in zip(store.teacher.parameters(), teacher_before, module.model.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * s.detach())
    q1 = store.predict(None, module, batch["image"])
    torch.testing.assert_close(store.tensors["pseudo"][[0, 2]], q1)  # the first update replaces
    # Same global step (gradient accumulation): no second EMA step; the temporal EMA averages.
    teacher_now = [p.detach().clone() for p in store.teacher.parameters()]
    again = batch_of([0, 2])
    store.on_train_batch_end(fake_trainer(step=1), module, {}, again, 1)
    assert all(torch.equal(a, b) for a, b in zip(teacher_now, store.teacher.parameters()))
    q2 = store.predict(None, module, again["image"])
    torch.testing.assert_close(store.tensors["pseudo"][[0, 2]], 0.7 * q1 + 0.3 * q2)
    assert store.tensors["latest_epoch"].tolist() == [0, -1, 0, -1]
    assert module.model.training and module.model.norm.training, "the student's mode is left alone"

    # Checkpoint round trip, loading before setup (pending teacher) and after.
    state = store.state_dict()
    for build_first in (False, True):
        clone = DualEMAStore(4, 3, teacher_momentum=0.5, teacher_ramp=False)
        if build_first:
            clone.setup(fake_trainer(), FakeModule(), "fit")
        clone.load_state_dict(state)
        if not build_first:
            clone.setup(fake_trainer(), FakeModule(), "fit")
        assert clone.checksum() == store.checksum()
        assert torch.equal(clone.tensors["pseudo"], store.tensors["pseudo"])
    with pytest.raises(ValueError, match="teacher"):
        DualEMAStore(4, 3).load_state_dict(DualEMAStore(4, 3, dual_ema=False).state_dict())

    # Diagnostics of the pseudo-labels against the hidden labels, at the next epoch start.
    store.tensors["pseudo"][0] = torch.tensor([1.0, 0.9, 0.2])  # (0, 1) hidden positive found
    store.tensors["pseudo"][2] = torch.tensor([1.0, 0.7, 0.3])  # (2, 1) wrong, (2, 2) missed
    store.on_train_epoch_start(fake_trainer(epoch=1), module)
    assert module.logged["diag/pseudo_label_precision"] == 50.0
    assert module.logged["diag/pseudo_label_recall"] == 50.0


def test_teacher_every_k_predicts_each_sample_once_every_k_epochs():
    module = FakeModule()
    store = DualEMAStore(4, 3, teacher_every=2)
    store.setup(fake_trainer(), module, "fit")
    calls = []
    predict = store.predict
    store.predict = lambda trainer, pl_module, images: (
        calls.append(images.shape[0]) or predict(trainer, pl_module, images)
    )
    for epoch in range(4):
        store.on_train_batch_end(fake_trainer(epoch=epoch, step=epoch + 1), module, {}, batch_of([0, 1, 2, 3]), 0)
        # (index + epoch) % 2 == 0: samples 0 and 2 in even epochs, 1 and 3 in odd ones.
        expected = [0, 2] if epoch % 2 == 0 else [1, 3]
        assert torch.nonzero(store.tensors["latest_epoch"] == epoch).flatten().tolist() == expected
    assert calls == [2, 2, 2, 2], "the teacher forward runs on half of each batch"
    assert store.coverage().tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="teacher_every"):
        DualEMAStore(4, 3, teacher_every=0)


def test_single_ema_ablation_uses_the_student_in_eval_mode():
    module = FakeModule()
    store = DualEMAStore(4, 3, dual_ema=False)
    store.setup(fake_trainer(), module, "fit")
    assert store.teacher is None
    batch = batch_of([1, 3])
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch, 0)
    module.model.eval()
    with torch.no_grad():
        expected = module.model(batch["image"])["logits"].sigmoid()
    torch.testing.assert_close(store.tensors["pseudo"][[1, 3]], expected)


def test_stage_switch_records_once_decides_and_round_trips():
    module = FakeModule()
    store = DualEMAStore(4, 3)
    store.setup(fake_trainer(), module, "fit")
    store.tensors["latest"] = torch.tensor([[0.9, 0.1, 0.1], [0.2, 0.8, 0.1], [0.6, 0.3, 0.2], [0.1, 0.1, 0.9]])
    store.tensors["latest_epoch"].fill_(0)
    switch = EarlyLearningStageSwitch(store, StageTrigger("fixed", fixed_epoch=1))
    switch.on_train_epoch_start(fake_trainer(epoch=0), module)
    batch = batch_of([0])
    switch.on_train_batch_start(fake_trainer(epoch=0), module, batch, 0)
    assert batch["extras"]["adagc_stage"] == "warmup" and switch.curve == []
    switch.on_train_epoch_end(fake_trainer(epoch=0), module)
    assert module.logged["adagc/indicator"] == pytest.approx(100.0)
    switch.on_train_epoch_start(fake_trainer(epoch=1), module)
    assert module.logged.pop("adagc/trigger_epoch") == 1.0
    switch.on_train_epoch_start(fake_trainer(epoch=1), module)  # idempotent: nothing recorded or logged twice
    assert switch.curve == [pytest.approx(100.0)] and switch.trigger_epoch == 1
    assert "adagc/trigger_epoch" not in module.logged
    batch = batch_of([0])
    switch.on_train_batch_start(fake_trainer(epoch=1), module, batch, 0)
    assert batch["extras"]["adagc_stage"] == "gc"
    clone = EarlyLearningStageSwitch(store, StageTrigger("fixed", fixed_epoch=1))
    clone.load_state_dict(switch.state_dict())
    assert clone.curve == switch.curve and clone.trigger_epoch == 1 and clone.stage(2) == "gc"
    # Adaptive mode: decided by the curve; forced at max_warmup.
    adaptive = EarlyLearningStageSwitch(store, StageTrigger("adaptive", min_warmup=1, max_warmup=2))
    adaptive.curve = [30.0, 40.0]
    assert not adaptive.should_switch(1) and adaptive.should_switch(2)


def test_gc_mixup_is_reproducible_and_only_in_gc_stage():
    mixup = GCMixup(alpha=0.4, seed=3)
    perm_a, lam_a = mixup.draw(8, epoch=2, batch_idx=5)
    perm_b, lam_b = GCMixup(alpha=0.4, seed=3).draw(8, epoch=2, batch_idx=5)
    assert torch.equal(perm_a, perm_b) and lam_a == lam_b and 0 <= lam_a <= 1
    assert sorted(perm_a.tolist()) == list(range(8))
    assert mixup.draw(8, epoch=2, batch_idx=6)[1] != lam_a

    warm = batch_of([0, 1, 2, 3])
    warm["extras"]["adagc_stage"] = "warmup"
    image = warm["image"]
    mixup.on_train_batch_start(fake_trainer(epoch=2), FakeModule(), warm, 5)
    assert warm["image"] is image and "mixup" not in warm["extras"] and "clean_image" not in warm

    gc = batch_of([0, 1, 2, 3])
    gc["extras"]["adagc_stage"] = "gc"
    clean = gc["image"]
    mixup.on_train_batch_start(fake_trainer(epoch=2), FakeModule(), gc, 5)
    perm, lam = mixup.draw(4, epoch=2, batch_idx=5)
    assert gc["clean_image"] is clean
    torch.testing.assert_close(gc["image"], lam * clean + (1 - lam) * clean[perm])
    assert torch.equal(gc["extras"]["mixup"]["perm"], perm) and gc["extras"]["mixup"]["lam"] == lam
    with pytest.raises(RuntimeError, match="after EarlyLearningStageSwitch"):
        mixup.on_train_batch_start(fake_trainer(), FakeModule(), batch_of([0]), 0)


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "experiment", ["adagc_ablation", "adagc_ben_random", "adagc_ben_dominant", "adagc_aid_random", "adagc_aid_manual"]
)
def test_experiment_presets_compose(experiment):
    cfg = compose(f"experiment={experiment}")
    assert cfg.loss._target_ == "splml.methods.adagc.loss.AdaGCLoss"
    assert AdaGCLoss(**{k: v for k, v in cfg.loss.items() if k != "_target_"}).name == "adagc"
    if experiment != "adagc_ablation":
        assert cfg.backbone.name == "resnet50"
        # The benchmark presets set no loss.* key, so the comparison sweep can swap the loss.
        assert set(compose(f"experiment={experiment}", "loss=an").loss) == {"_target_"}


@pytest.mark.parametrize(
    ("ablation", "switch"),
    [
        ("adagc_fixed_trigger", ("trigger", "fixed")),
        ("adagc_single_ema", ("dual_ema", False)),
        ("adagc_no_mixup", ("mixup", False)),
        ("adagc_teacher_every4", ("teacher_every", 4)),
    ],
)
def test_ablation_variants_switch_one_component_each(ablation, switch):
    full = compose("experiment=adagc_ablation").loss
    variant = compose("experiment=adagc_ablation", f"ablation={ablation}").loss
    key, value = switch
    assert full[key] != value and variant[key] == value
    # Everything else, the synthetic preset's settings included, stays as in the full method.
    assert {k: v for k, v in variant.items() if k != key} == {k: v for k, v in full.items() if k != key}
    assert variant.max_warmup == 5 and variant.teacher_momentum == 0.99


def test_ablation_preset_matches_the_methods_sweep_setting():
    # The baselines of experiment=synthetic_methods are AdaGC's comparison: same data, model, length.
    adagc, methods = compose("experiment=adagc_ablation"), compose("experiment=synthetic_methods")
    for key in ("dataset", "backbone", "optim", "trainer"):
        assert adagc[key] == methods[key], key


def compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose_config("train", overrides=list(overrides))


# -- real training: resume across the stage switch -------------------------------------------------


def _callback_states(ckpt: Path) -> dict[str, dict]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    else:
        assert a == b, where


@pytest.mark.parametrize(
    "trigger",
    [
        # switched before the interruption: the resumed run must restore the GC stage
        ["loss.trigger=fixed", "loss.fixed_epoch=1"],
        # switched right after the resume (forced at max_warmup): decided from the restored curve
        ["loss.trigger=adaptive", "loss.min_warmup=2", "loss.max_warmup=2"],
    ],
    ids=["fixed1", "adaptive-after-resume"],
)
def test_resume_across_the_stage_switch_equals_uninterrupted_run(tmp_path, trigger):
    cache = tmp_path / "cache"
    common = ["loss=adagc", *trigger, "seed=5", "dataset.datamodule.image_size=32", "trainer.max_epochs=3"]
    full = train(compose_train(tmp_path / "straight", *common, cache_dir=cache))
    train(compose_train(
        tmp_path / "resumed", *common, "+callbacks.stop._target_=tests.helpers.StopAfterEpochs",
        "+callbacks.stop.epochs=2", cache_dir=cache,
    ))  # fmt: skip
    resumed = train(compose_train(
        tmp_path / "resumed", *common, f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}",
        cache_dir=cache,
    ))  # fmt: skip

    states_full = _callback_states(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    states_resumed = _callback_states(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for name in ("EarlyLearningStageSwitch", "DualEMAStore"):
        _assert_same(states_full[name], states_resumed[name], name)
    switch = states_full["EarlyLearningStageSwitch"]
    assert switch["trigger_epoch"] == (1 if "loss.fixed_epoch=1" in trigger else 2)
    assert len(switch["curve"]) == 2 and all(math.isfinite(v) for v in switch["curve"])
    assert states_full["DualEMAStore"]["tensors"]["update_count"].tolist() == [3] * 48
    for metric in ("test/mAP_macro", "test/mAP_micro", "val/mAP_macro_best"):
        assert resumed[metric] == pytest.approx(full[metric], abs=1e-6), metric
    with open(tmp_path / "resumed" / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    triggers = [row["epoch"] for row in rows if row.get("adagc/trigger_epoch")]
    assert triggers == [str(switch["trigger_epoch"])], "the trigger epoch is logged once"
    assert {row["epoch"] for row in rows if row.get("adagc/indicator")} == {"0", "1", "2"}
