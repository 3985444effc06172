"""AdaGC (reconstruction): GC loss, Mixup targets, teachers and store, stage switch, configs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from torch import nn

from splml.builders import config_dir, register_resolvers
from splml.methods.adagc.loss import (
    AdaGCLoss,
    calibrate_pseudo_labels,
    calibrated_targets,
    gradient_calibration_loss,
    mixed_target_loss,
)
from splml.methods.adagc.mixup import GCMixup
from splml.methods.adagc.store import DualEMAStore
from splml.methods.adagc.switch import Decision, EarlyLearningStageSwitch, StageTrigger
from splml.methods.adagc.teacher import EMATeacher, teacher_momentum_at
from splml.methods.an import assume_negative_loss
from splml.methods.base import LossContext

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
    torch.testing.assert_close(calibrate_pseudo_labels(t, correction=0.5), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="excludes threshold"):
        calibrate_pseudo_labels(t, threshold=0.3, correction=0.5)


def test_mixup_targets_are_mixed_like_the_images():
    observed = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    pseudo = torch.tensor([[0.0, 0.8, 0.2], [0.6, 0.4, 0.0]])
    probs = torch.tensor([[0.7, 0.6, 0.3], [0.5, 0.2, 0.9]])
    perm, lam, weight = torch.tensor([1, 0]), 0.7, 0.5
    loss = AdaGCLoss(gc_weight=weight, correction_threshold=None)  # soft targets: the mixing shows in every entry
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
    # Default: AIO2's correction, the unknown entries above 0.5 become positives, the others stay 0.
    corrected = torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(gc["loss"], gradient_calibration_loss(probs, observed, corrected))
    assert gc["pseudo_positive_mask"].tolist() == [[False, True, False]]
    soft = AdaGCLoss(mixup=False, correction_threshold=None)(
        outputs, {"observed": observed, "extras": {"adagc_stage": "gc", "adagc_pseudo": pseudo}}, LossContext()
    )
    torch.testing.assert_close(soft["loss"], gradient_calibration_loss(probs, observed, pseudo))
    # gc=false: the corrected stage trains AN (the ablation of GC itself).
    no_gc = AdaGCLoss(mixup=False, gc=False)(
        outputs, {"observed": observed, "extras": {"adagc_stage": "gc", "adagc_pseudo": pseudo}}, LossContext()
    )
    torch.testing.assert_close(no_gc["loss"], assume_negative_loss(probs, observed))
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
        ({"trigger": "sometimes"}, "trigger must be one of"),
        ({"trigger": "adaptive"}, "trigger must be one of"),
        ({"window_sizes": [1, 3]}, ">= 2"),
        ({"min_warmup": 5, "max_warmup": 3}, "min_warmup <= max_warmup"),
        ({"window": 1}, "window must be >= 2"),
        ({"fixed_epoch": 3, "fixed_decided_at": 2}, "fixed_decided_at >= fixed_epoch"),
        ({"fixed_epoch": 0, "fixed_decided_at": 2}, "fixed_epoch >= 1"),
        ({"curve": "auc"}, "curve must be one of"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"pseudo_labels": "student"}, "pseudo_labels must be one of"),
        ({"temporal_momentum": 1.0}, "temporal momentum"),
        ({"epoch_teacher_momentum": -0.1}, "epoch teacher momentum"),
        ({"correction_threshold": 1.0}, "correction_threshold"),
        ({"sharpen": 0.5}, "set correction_threshold: null"),
        ({"mixup_alpha": 0.0}, "Mixup alpha must be > 0"),
    ],
)
def test_bad_options_fail_when_the_loss_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        AdaGCLoss(**options)


def test_rules_decide_when_and_where_to():
    fixed = StageTrigger("fixed", fixed_epoch=3)
    assert not fixed.rolls_back and fixed.decide([0.1] * 2) is None and fixed.decide([0.1] * 3) == Decision(3, 3)
    back = StageTrigger("fixed", fixed_epoch=2, fixed_decided_at=5)
    assert back.rolls_back and back.decide([0.1] * 4) is None and back.decide([0.1] * 5) == Decision(5, 2)
    aio2 = StageTrigger("aio2", window_sizes=(2, 3, 4))
    assert aio2.rolls_back
    e = np.arange(20, dtype=np.float64)
    curve = list(0.5 * (1 - np.exp(-0.7 * (e + 1))) + 0.025 * np.clip(e - 10, 0, None))
    decision = aio2.decide(curve)
    assert decision is not None and decision.trigger_epoch < decision.decided_at
    assert decision.detection["trigger"] == decision.trigger_epoch and set(decision.detection["votes"]) == {2, 3, 4}
    # The earlier knee rule: never before min_warmup, forced at max_warmup, no rollback.
    knee = StageTrigger("knee", min_warmup=2, max_warmup=6, window=3)
    assert not knee.rolls_back
    assert knee.decide(list(np.arange(10) * 0.05)) == Decision(6, 6)
    assert knee.decide(list(np.arange(5) * 0.05)) is None


def test_the_switch_applies_the_options_the_loss_checked():
    loss = AdaGCLoss(trigger="fixed", fixed_epoch=3, curve="map", snapshot_every=2, epoch_teacher=False)
    switch, store, mixup = loss.callbacks(4, 3)
    assert switch.rule is loss.stage_trigger and (switch.rule.trigger, switch.rule.fixed_epoch) == ("fixed", 3)
    assert switch.score == "map" and switch.snapshots.every == 2 and switch.source is store
    assert store.teacher_names == ("step",)
    assert mixup is loss.callbacks(4, 3)[2], "the Mixup options are checked once too: one callback"


# -- teachers, store, switch, Mixup (fake trainer) -------------------------------------------------


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
        global_rank=0, max_epochs=10, is_global_zero=True,
    )  # fmt: skip


def batch_of(idx):
    idx = torch.tensor(idx)
    return {"index": idx, "image": torch.randn(len(idx), 2), "observed": torch.from_numpy(OBS)[idx], "extras": {}}


def _moved(model: nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)  # the "optimizer step"


def test_two_teachers_step_and_epoch_updates():
    module = FakeModule()
    store = DualEMAStore(4, 3, teacher_momentum=0.5, epoch_teacher_momentum=0.25, teacher_ramp=False)
    store.setup(fake_trainer(), module, "fit")
    step_before = [p.detach().clone() for p in store.teacher.parameters()]
    epoch_before = [p.detach().clone() for p in store.epoch_teacher_module.parameters()]
    _moved(module.model, 1.0)
    batch = batch_of([0, 2])
    batch["extras"]["adagc_stage"] = "warmup"
    store.on_train_batch_start(fake_trainer(), module, batch, 0)
    assert batch["extras"]["adagc_pseudo"] is None, "the warm-up reads no pseudo-label"
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch, 0)
    for t, t0, s in zip(store.teacher.parameters(), step_before, module.model.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * s.detach())
    assert all(torch.equal(a, b) for a, b in zip(store.epoch_teacher_module.parameters(), epoch_before, strict=True))
    # Warm-up: the per-step teacher's predictions of the batch are recorded for the curve.
    torch.testing.assert_close(store.tensors["latest"][[0, 2]], store.predict(None, batch["image"], ("step",)))
    assert store.tensors["latest_epoch"].tolist() == [0, -1, 0, -1]
    # Same global step (gradient accumulation): no second EMA step.
    now = [p.detach().clone() for p in store.teacher.parameters()]
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch, 1)
    assert all(torch.equal(a, b) for a, b in zip(now, store.teacher.parameters(), strict=True))
    # The per-epoch teacher moves once, at the start of the next epoch, from the student's end state.
    store.on_train_epoch_start(fake_trainer(epoch=1), module)
    for t, t0, s in zip(store.epoch_teacher_module.parameters(), epoch_before, module.model.parameters(), strict=True):
        torch.testing.assert_close(t, 0.25 * t0 + 0.75 * s.detach())
    after = [p.detach().clone() for p in store.epoch_teacher_module.parameters()]
    store.on_train_epoch_start(fake_trainer(epoch=1), module)  # idempotent: no batch trained since
    assert all(torch.equal(a, b) for a, b in zip(after, store.epoch_teacher_module.parameters(), strict=True))
    assert store.meta["step_updates"] == 1 and store.meta["epoch_updates"] == 1
    assert module.model.training and module.model.norm.training, "the student's mode is left alone"


def test_gc_pseudo_labels_are_the_teachers_mean_before_the_step():
    module = FakeModule()
    store = DualEMAStore(4, 3, teacher_momentum=0.5, teacher_ramp=False)
    store.setup(fake_trainer(), module, "fit")
    _moved(module.model, 0.5)
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch_of([0, 1]), 0)  # the teachers now differ
    store.on_train_epoch_start(fake_trainer(epoch=1), module)
    batch = batch_of([1, 3])
    batch["extras"]["adagc_stage"] = "gc"
    store.on_train_batch_start(fake_trainer(epoch=1), module, batch, 0)
    step = store.predict(None, batch["image"], ("step",))
    epoch = store.predict(None, batch["image"], ("epoch",))
    assert not torch.allclose(step, epoch)
    torch.testing.assert_close(batch["extras"]["adagc_pseudo"], (step + epoch) / 2)
    # GC stage with online corrections: the EMA moves, but nothing per sample is recorded any more.
    latest = store.tensors["latest"].clone()
    store.on_train_batch_end(fake_trainer(epoch=1, step=2), module, {}, batch, 0)
    assert torch.equal(store.tensors["latest"], latest) and store.meta["step_updates"] == 2
    single = DualEMAStore(4, 3, epoch_teacher=False)
    single.setup(fake_trainer(), module, "fit")
    batch = batch_of([1, 3])
    batch["extras"]["adagc_stage"] = "gc"
    single.on_train_batch_start(fake_trainer(epoch=1), module, batch, 0)
    torch.testing.assert_close(batch["extras"]["adagc_pseudo"], single.predict(None, batch["image"], ("step",)))


def test_temporal_ema_variant_and_checkpoint_round_trip():
    module = FakeModule()
    store = DualEMAStore(4, 3, teacher_momentum=0.5, teacher_ramp=False, pseudo_labels="temporal_ema")
    store.setup(fake_trainer(), module, "fit")
    assert torch.equal(store.tensors["pseudo"], torch.from_numpy(OBS))
    batch = batch_of([0, 2])
    batch["extras"]["adagc_stage"] = "gc"
    store.on_train_batch_start(fake_trainer(), module, batch, 0)
    assert torch.equal(batch["extras"]["adagc_pseudo"], torch.from_numpy(OBS[[0, 2]]))
    _moved(module.model, 1.0)
    store.on_train_batch_end(fake_trainer(step=1), module, {}, batch, 0)
    q1 = store.predict(None, batch["image"])
    torch.testing.assert_close(store.tensors["pseudo"][[0, 2]], q1)  # the first update replaces
    again = batch_of([0, 2])
    again["extras"]["adagc_stage"] = "gc"
    store.on_train_batch_end(fake_trainer(step=1), module, {}, again, 1)
    q2 = store.predict(None, again["image"])
    torch.testing.assert_close(store.tensors["pseudo"][[0, 2]], 0.7 * q1 + 0.3 * q2)

    # Checkpoint round trip, loading before setup (pending teachers) and after.
    state = store.state_dict()
    assert set(state["teachers"]) == {"step", "epoch"}
    for build_first in (False, True):
        clone = DualEMAStore(4, 3, teacher_momentum=0.5, teacher_ramp=False, pseudo_labels="temporal_ema")
        if build_first:
            clone.setup(fake_trainer(), FakeModule(), "fit")
        clone.load_state_dict(state)
        if not build_first:
            clone.setup(fake_trainer(), FakeModule(), "fit")
        assert clone.checksum() == store.checksum()
        assert torch.equal(clone.tensors["pseudo"], store.tensors["pseudo"])
    with pytest.raises(ValueError, match="teachers"):
        DualEMAStore(4, 3).load_state_dict(DualEMAStore(4, 3, epoch_teacher=False).state_dict())

    # Diagnostics of the pseudo-labels against the hidden labels, at the next epoch start.
    store.tensors["pseudo"][0] = torch.tensor([1.0, 0.9, 0.2])  # (0, 1) hidden positive found
    store.tensors["pseudo"][2] = torch.tensor([1.0, 0.7, 0.3])  # (2, 1) wrong, (2, 2) missed
    store.on_train_epoch_start(fake_trainer(epoch=1), module)
    assert module.logged["diag/pseudo_label_precision"] == 50.0
    assert module.logged["diag/pseudo_label_recall"] == 50.0


def test_stage_switch_records_once_decides_and_round_trips(tmp_path):
    module = FakeModule()
    store = DualEMAStore(4, 3)
    store.setup(fake_trainer(), module, "fit")
    store.tensors["latest"] = torch.tensor([[0.9, 0.1, 0.1], [0.2, 0.8, 0.6], [0.6, 0.3, 0.2], [0.1, 0.1, 0.9]])
    store.tensors["latest_epoch"].fill_(0)
    switch = EarlyLearningStageSwitch(store, StageTrigger("fixed", fixed_epoch=1))
    trainer = fake_trainer(epoch=0)
    trainer.default_root_dir = str(tmp_path)
    trainer.loggers = []
    switch.on_train_epoch_start(trainer, module)
    batch = batch_of([0])
    switch.on_train_batch_start(trainer, module, batch, 0)
    assert batch["extras"]["adagc_stage"] == "warmup" and switch.curve == []
    switch.on_train_epoch_end(trainer, module)
    # 4 TP, 1 FP (the 0.6 of sample 1), no FN -> IoU 0.8
    assert module.logged["adagc/curve"] == pytest.approx(0.8)
    trainer.current_epoch = 1
    switch.on_train_epoch_start(trainer, module)
    assert module.logged.pop("adagc/trigger_epoch") == 1.0 and module.logged.pop("adagc/epochs_rolled_back") == 0.0
    switch.on_train_epoch_start(trainer, module)  # idempotent: nothing recorded or logged twice
    assert switch.curve == [pytest.approx(0.8)] and switch.trigger_epoch == 1
    assert "adagc/trigger_epoch" not in module.logged
    assert (tmp_path / "adagc_trigger.png").is_file(), "the figure is drawn when the warm-up ends"
    batch = batch_of([0])
    switch.on_train_batch_start(trainer, module, batch, 0)
    assert batch["extras"]["adagc_stage"] == "gc"
    clone = EarlyLearningStageSwitch(store, StageTrigger("fixed", fixed_epoch=1))
    clone.load_state_dict(switch.state_dict())
    assert clone.curve == switch.curve and clone.decision == switch.decision and clone.stage(2) == "gc"
    # A checkpoint from before the undone steps were counted (no trainer.max_steps was allowed then) resumes.
    older = {k: v for k, v in switch.state_dict().items() if k != "steps_undone"}
    clone.steps_undone = 7
    clone.load_state_dict(older)
    assert clone.steps_undone == 0 and clone.decision == switch.decision
    with pytest.raises(ValueError, match="earlier AdaGC version"):
        clone.load_state_dict({"curve": [], "trigger_epoch": None, "trigger": "adaptive"})


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
        ("adagc_knee_trigger", {"trigger": "knee", "curve": "map"}),
        ("adagc_fixed_trigger", {"trigger": "fixed"}),
        ("adagc_temporal_ema", {"pseudo_labels": "temporal_ema", "correction_threshold": None}),
        ("adagc_single_ema", {"epoch_teacher": False}),
        ("adagc_no_mixup", {"mixup": False}),
        ("adagc_no_gc", {"gc": False}),
    ],
)
def test_ablation_variants_switch_one_component_each(ablation, switch):
    full = compose("experiment=adagc_ablation").loss
    variant = compose("experiment=adagc_ablation", f"ablation={ablation}").loss
    for key, value in switch.items():
        assert full[key] != value and variant[key] == value
    # Everything else, the synthetic preset's settings included, stays as in the full method.
    assert {k: v for k, v in variant.items() if k not in switch} == {k: v for k, v in full.items() if k not in switch}
    assert variant.window_sizes == [2, 3] and variant.teacher_momentum == 0.99
    assert full.trigger == "aio2" and full.epoch_teacher and full.pseudo_labels == "teacher"


def test_ablation_preset_matches_the_methods_sweep_setting():
    # The baselines of experiment=synthetic_methods are AdaGC's comparison: same data, model, length.
    adagc, methods = compose("experiment=adagc_ablation"), compose("experiment=synthetic_methods")
    for key in ("dataset", "backbone", "optim", "trainer"):
        assert adagc[key] == methods[key], key


def compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose_config("train", overrides=list(overrides))


def test_snapshot_interval_and_the_nearest_saved_epoch():
    from splml.methods.adagc.rollback import TrainingSnapshots

    snapshots = TrainingSnapshots(every=2)
    assert [e for e in range(7) if snapshots.due(e)] == [2, 4, 6], "from epoch 1 on, every 2 epochs"
    snapshots.epochs = [2, 4]
    assert [snapshots.nearest(t) for t in (1, 3, 4, 5, 9)] == [2, 2, 4, 4, 4], "ties go to the earlier epoch"
    assert not snapshots.due(4), "an epoch is saved once"
    with pytest.raises(RuntimeError, match="no snapshot"):
        TrainingSnapshots().nearest(1)
    with pytest.raises(ValueError, match="interval"):
        TrainingSnapshots(every=0)
