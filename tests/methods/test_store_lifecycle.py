"""Stores across a whole run: resume equivalence and DDP consistency, with real training."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splml.methods.registry import method, methods
from splml.train import train

from ..helpers import compose_train

#: One run per kind of store: the methods whose resume is trained here (AdaGC's stores have their
#: own resume test, across the stage switch, in tests/methods/adagc/).
RESUMED = ("en_scl", "role", "ll_cp", "em_apl")
RESUMED_ELSEWHERE = ("adagc",)
EXTRA = {"em_apl": ["loss.warmup=1"], "ll_cp": ["loss.delta_rel=0.02"], "en_scl": ["loss.gamma=0.5"]}


def store_names(loss: str) -> list[str]:
    """The store callbacks the method registers (what its checkpoint must carry)."""
    return [store.__name__ for store in method(loss).stores]


def test_every_kind_of_store_is_resumed_by_a_test():
    """A new method with a new kind of store fails here until a resume test covers it."""
    covered = {store for loss in RESUMED + RESUMED_ELSEWHERE for store in method(loss).stores}
    assert {store for m in methods().values() for store in m.stores} <= covered


def _callback_states(ckpt: Path) -> dict[str, dict]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]


def _assert_same_state(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), f"{where}/{key}"
        elif isinstance(value, dict):
            _assert_same_state(value, b[key], f"{where}/{key}")
        else:
            assert value == b[key], f"{where}/{key}"


@pytest.mark.parametrize("loss", sorted(RESUMED))
def test_resumed_run_equals_uninterrupted_run(tmp_path, loss):
    cache = tmp_path / "cache"
    common = [f"loss={loss}", *EXTRA.get(loss, []), "seed=5", "dataset.datamodule.augment.crop_scale=[0.5,1.0]"]
    straight = compose_train(tmp_path / "straight", *common, "trainer.max_epochs=3", cache_dir=cache)
    full = train(straight)

    # Interrupted after epoch 2 of 3 (same schedule), then resumed from last.ckpt.
    first = compose_train(
        tmp_path / "resumed", *common, "trainer.max_epochs=3",
        "+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=2", cache_dir=cache,
    )  # fmt: skip
    train(first)
    resumed_cfg = compose_train(
        tmp_path / "resumed", *common, "trainer.max_epochs=3",
        f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}", cache_dir=cache,
    )  # fmt: skip
    resumed = train(resumed_cfg)

    states_full = _callback_states(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    states_resumed = _callback_states(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for name in store_names(loss):
        key = next(k for k in states_full if k.startswith(name))
        _assert_same_state(states_full[key], states_resumed[key], key)
    for metric in ("test/mAP_macro", "test/mAP_micro", "val/mAP_macro_best"):
        assert resumed[metric] == pytest.approx(full[metric], abs=1e-6), metric
    assert resumed["best_epoch"] == full["best_epoch"]
    with open(tmp_path / "resumed" / "csv" / "metrics.csv") as fh:
        epochs = {row["epoch"] for row in csv.DictReader(fh) if row.get("val/mAP_macro")}
    assert epochs == {"0", "1", "2"}, "the metrics of the epochs before the resume are kept"


def test_two_process_ddp_keeps_stores_identical_and_complete(tmp_path):
    """2 CPU processes (gloo): each rank checks the store checksums at every epoch end (a mismatch
    aborts the run); every sample must have updated each store exactly once per epoch. EN+SCL
    carries both kinds of store: the EMA scores and the heatmaps (whose rows travel with their
    own update path)."""
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "splml.train", "trainer=ddp_cpu", "loss=en_scl", "trainer.max_epochs=2",
        "dataset.datamodule.synthetic.n_train=48", "dataset.datamodule.synthetic.n_validation=24",
        "dataset.datamodule.synthetic.n_test=24", "dataset.datamodule.max_samples.train=45",
        "dataset.datamodule.batch_size=8", "backbone=resnet10t",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test/num_samples"] == 24, "every test sample evaluated once across the two ranks"
    states = _callback_states(run_dir / "checkpoints" / "last.ckpt")
    for name in store_names("en_scl"):
        counts = states[name]["tensors"]["update_count"]
        # 45 samples on 2 ranks -> one padded repeat per epoch, which must not count twice.
        assert counts.shape == (45,), name
        assert torch.equal(counts, torch.full((45,), 2, dtype=counts.dtype)), name
