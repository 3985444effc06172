"""Mixed precision (``trainer.precision=bf16-mixed``): the network in autocast, losses and stores in float32.

The end-to-end comparison runs bf16 autocast on the CPU, the same code path a GPU takes under
``bf16-mixed`` (Lightning's ``MixedPrecision`` plugin around the forward pass).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from splml.methods.store import StoreCallback
from splml.train import train
from tests.helpers import compose_train

SHORT_RUN = (
    "trainer.max_epochs=1",
    "dataset.datamodule.image_size=32",
    "dataset.datamodule.synthetic.n_train=32",
    "dataset.datamodule.synthetic.n_validation=16",
    "dataset.datamodule.synthetic.n_test=16",
)


def _floating_dtypes(state: Any) -> set[torch.dtype]:
    if isinstance(state, torch.Tensor):
        return {state.dtype} if state.is_floating_point() else set()
    if isinstance(state, dict):
        return set().union(*(_floating_dtypes(v) for v in state.values()))
    if isinstance(state, (list, tuple)):
        return set().union(*(_floating_dtypes(v) for v in state))
    return set()


@pytest.fixture(scope="module")
def adagc_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """AdaGC (a per-sample EMA store and a weight-EMA teacher), one short run per precision, same seed."""
    base = tmp_path_factory.mktemp("precision")
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        run = base / precision
        cfg = compose_train(run, "loss=adagc", f"trainer.precision={precision}", *SHORT_RUN, cache_dir=base / "cache")
        train(cfg)
        runs[precision] = run
    return runs


def test_bf16_autocast_gives_the_float32_results_within_tolerance(adagc_runs):
    full, mixed = (json.loads((adagc_runs[p] / "results.json").read_text()) for p in ("32-true", "bf16-mixed"))
    assert mixed["status"] == full["status"] == "completed"
    assert set(mixed) == set(full)
    # bf16 keeps 8 bits of mantissa: one epoch on 32 images moves the scores a little, never far.
    for key in ("val/mAP_macro_best", "test/mAP_macro", "test/mAP_micro"):
        assert mixed[key] == pytest.approx(full[key], abs=3.0), key
    assert mixed["test/num_samples"] == full["test/num_samples"]


def test_stores_and_the_ema_teacher_stay_float32_under_bf16(adagc_runs):
    checkpoint = torch.load(adagc_runs["bf16-mixed"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert _floating_dtypes(checkpoint["state_dict"]) == {torch.float32}
    store_states = [s for k, s in checkpoint["callbacks"].items() if "Store" in k]
    assert store_states, f"no store in the checkpoint's callbacks: {list(checkpoint['callbacks'])}"
    for state in store_states:
        assert _floating_dtypes(state) == {torch.float32}, "a store (or the EMA teacher) holds half-precision values"
    # AdaGC's weight-EMA teachers (per iteration and per epoch), by name.
    teachers = next(s["teachers"] for s in store_states if s.get("teachers"))
    reference = torch.load(adagc_runs["32-true"] / "checkpoints" / "last.ckpt", weights_only=False)
    ref_teachers = next(s["teachers"] for k, s in reference["callbacks"].items() if "Store" in k and s.get("teachers"))
    assert set(teachers) == set(ref_teachers) and teachers
    for teacher_name, teacher in teachers.items():
        for name, weight in teacher.items():
            if weight.is_floating_point() and "running" not in name:
                torch.testing.assert_close(
                    weight, ref_teachers[teacher_name][name], rtol=0.05, atol=0.02, msg=f"{teacher_name}: {name}"
                )


def test_the_loss_gets_float32_outputs_with_autocast_off(tmp_path):
    """Under bf16 autocast the network's outputs are bf16; the loss sees them as float32, outside autocast."""
    from splml.builders import build_datamodule, build_module

    cfg = compose_train(tmp_path, "loss=an", *SHORT_RUN)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    seen: dict[str, Any] = {}
    original = module.loss.forward

    def spy(outputs, batch, context):
        seen["dtype"], seen["autocast"] = outputs["logits"].dtype, torch.is_autocast_enabled("cpu")
        return original(outputs, batch, context)

    module.loss.forward = spy  # type: ignore[method-assign]
    batch = next(iter(datamodule.train_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.model(batch["image"])["logits"].dtype == torch.bfloat16, "autocast did not reach the network"
        result = module.training_step(batch, 0)
    assert seen == {"dtype": torch.float32, "autocast": False}
    assert result["outputs"]["logits"].dtype == torch.float32, "the stores would receive bf16 outputs"


def test_store_updates_arrive_in_float32():
    store = StoreCallback(num_samples=4, num_classes=3)
    batch = {"index": torch.tensor([2, 0]), "padded": torch.tensor([False, False])}
    values = torch.rand(2, 3).to(torch.bfloat16)
    idx, rows = store.gather_updates(batch, values)
    assert rows.dtype == torch.float32
    assert idx.tolist() == [2, 0]
    torch.testing.assert_close(rows, values.float())


def test_gradient_scale_reads_the_16_mixed_loss_scale():
    from types import SimpleNamespace

    from splml.methods.store import gradient_scale

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert gradient_scale(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))) == 1024.0
    assert gradient_scale(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))) is None
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert gradient_scale(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=disabled))) is None


class _Scaler:
    """What ``gradient_scale`` reads of a ``torch.amp.GradScaler``; the scale is set by the test."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scale


def test_role_label_table_unscales_16_mixed_gradients_and_skips_the_skipped_steps():
    from types import SimpleNamespace

    from splml.methods.role.store import LabelEstimatorStore
    from tests.methods.test_stores import OBS, FakeModule, batch_of, fake_trainer

    weights = torch.tensor([1.0, 2.0, 3.0])

    def step(store, trainer, loss_scale: float, scale_after: float | None = None) -> None:
        batch = batch_of([1, 2])
        store.on_train_batch_start(trainer, module, batch, 0)
        ((batch["extras"]["role_g_logits"].sigmoid() * weights).sum() * loss_scale).backward()
        store.on_before_optimizer_step(trainer, module, None)
        if scale_after is not None:  # the scaler found inf/NaN gradients: it skipped the step and backed off
            trainer.precision_plugin.scaler.scale = scale_after
        store.on_train_batch_end(trainer, module, {}, batch, 0)

    module = FakeModule()
    # A large epsilon makes the row-wise Adam step depend on the gradient's magnitude: a scaled
    # gradient that was not divided by the loss scale would move the table differently.
    plain, scaled = (LabelEstimatorStore(4, 3, seed=3, eps=0.1) for _ in range(2))
    plain_trainer, scaled_trainer = fake_trainer(OBS), fake_trainer(OBS)
    scaled_trainer.precision_plugin = SimpleNamespace(scaler=_Scaler(1024.0))
    for store, trainer in ((plain, plain_trainer), (scaled, scaled_trainer)):
        store.setup(trainer, module, "fit")
    initial = plain.tensors["logits"].clone()
    for _ in range(2):
        step(plain, plain_trainer, 1.0)
        step(scaled, scaled_trainer, 1024.0)
    torch.testing.assert_close(scaled.tensors["logits"], plain.tensors["logits"])
    assert not torch.equal(plain.tensors["logits"], initial), "the table did not move"
    before = {k: v.clone() for k, v in scaled.tensors.items()}
    step(scaled, scaled_trainer, 1024.0, scale_after=512.0)
    for name, tensor in before.items():
        if name != "update_count":
            assert torch.equal(scaled.tensors[name], tensor), f"{name} changed on a step the optimizer skipped"
