"""AdaGC's rollback in real training: exact, resumable (same folder or another), under DDP, driven by AIO2's rule."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splml.methods.adagc.detection import detect_transition
from splml.methods.adagc.store import DualEMAStore
from splml.train import train

from ...helpers import compose_train

REPO = Path(__file__).resolve().parents[3]
PROBE = "+callbacks.probe._target_=tests.methods.adagc.probes.TrainingStateProbe"
#: Warm-up of 3 epochs, then back to the state after epoch 1: the run trains 3 + (4 - 1) = 6 epochs.
ROLLBACK = ["loss=adagc", "loss.trigger=fixed", "loss.fixed_epoch=1", "loss.fixed_decided_at=3", "trainer.max_epochs=4"]
COMMON = [*ROLLBACK, "seed=5", "dataset.datamodule.image_size=32", PROBE]
STOP = "+callbacks.stop._target_=tests.helpers.StopAfterEpochs"
#: What a resumed run must reproduce of results.json.
SAME = ("test/mAP_macro", "test/mAP_micro", "test/F1_macro", "val/mAP_macro_best", "best_epoch", "epochs_run")


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


def _probe(run: Path, rank: int = 0) -> dict[str, dict]:
    return json.loads((run / f"state_probe_rank{rank}.json").read_text())


def _metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("rollback")
    return tmp / "straight", train(compose_train(tmp / "straight", *COMMON, cache_dir=tmp / "cache"))


def test_rollback_restores_the_state_of_the_trigger_epoch(straight):
    run, results = straight
    assert results["epochs_run"] == 6, "3 warm-up epochs, then the 3 nominal epochs after epoch 1"
    probe = _probe(run)
    # The state training starts epoch 3 with (after the rollback) is the one it started epoch 1 with:
    # student, optimizer, learning rate, schedule and every store, bit for bit.
    assert probe["3"] == probe["1"]
    assert probe["2"]["student"] != probe["1"]["student"] and probe["2"]["stores"] != probe["1"]["stores"]
    assert probe["4"]["scheduler_steps"] == probe["2"]["scheduler_steps"]
    switch = _callback_states(run / "checkpoints" / "last.ckpt")["EarlyLearningStageSwitch"]
    assert (switch["decision"]["decided_at"], switch["decision"]["trigger_epoch"], switch["epochs_undone"]) == (3, 1, 2)
    rows = _metric_rows(run)
    logged = [
        (r["epoch"], r["adagc/trigger_epoch"], r["adagc/epochs_rolled_back"])
        for r in rows
        if "adagc/trigger_epoch" in r
    ]
    assert logged == [("3", "1.0", "2.0")], "the trigger is logged once, at the epoch it was decided"
    assert [r["epoch"] for r in rows if "adagc/curve" in r] == ["0", "1", "2"], "the curve covers the warm-up"
    assert {r["epoch"] for r in rows if r.get("adagc/gc_stage") == "1.0"} == {"3", "4", "5"}
    assert (run / "adagc_trigger.png").is_file()
    assert not (run / "checkpoints" / "rollback").exists(), "the snapshots are deleted once the run has ended"


@pytest.mark.parametrize(
    ("stop_after", "elsewhere"),
    [(4, False), (3, False), (3, True)],
    ids=["killed-after-the-rollback", "rollback-pending", "rollback-pending-resumed-elsewhere"],
)
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, straight, stop_after, elsewhere):
    straight_dir, full = straight
    cache = straight_dir.parent / "cache"
    first = tmp_path / "first"
    train(compose_train(first, *COMMON, STOP, f"+callbacks.stop.epochs={stop_after}", cache_dir=cache))
    if stop_after <= 3:
        assert (first / "checkpoints" / "rollback" / "epoch_001.pt").is_file(), (
            "a run stopped before its end keeps the snapshots a pending rollback needs"
        )
    if elsewhere:
        moved = tmp_path / "moved" / "first"
        shutil.move(first, moved)
        checkpoint, second = moved / "checkpoints" / "last.ckpt", tmp_path / "second"
    else:
        checkpoint, second = first / "checkpoints" / "last.ckpt", first
    resumed = train(compose_train(second, *COMMON, f"ckpt_path={checkpoint}", cache_dir=cache))

    for key in SAME:
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    assert json.loads((second / "results.json").read_text())["epochs_run"] == 6
    states, full_states = (_callback_states(d / "checkpoints" / "last.ckpt") for d in (second, straight_dir))
    for name in ("EarlyLearningStageSwitch", "DualEMAStore"):
        reference = {k: v for k, v in full_states[name].items() if k != "snapshots"}
        _assert_same({k: v for k, v in states[name].items() if k != "snapshots"}, reference, name)
    # Every epoch of the resumed run starts from the state the uninterrupted run started it from.
    straight_probe = _probe(straight_dir)
    for epoch, record in _probe(second).items():
        assert record == straight_probe[epoch], epoch


def test_the_loop_lengthens_by_what_the_rollback_undid():
    from types import SimpleNamespace

    from splml.methods.adagc.switch import EarlyLearningStageSwitch

    for limits, expected in (((4, 10), (6, 16)), ((4, -1), (6, -1)), ((-1, 10), (-1, 16))):
        loop = SimpleNamespace(max_epochs=limits[0], max_steps=limits[1])
        loop.epoch_loop = loop  # Lightning's fit loop reads max_steps from its epoch loop
        EarlyLearningStageSwitch._lengthen(SimpleNamespace(fit_loop=loop), epochs=2, steps=6)
        assert (loop.max_epochs, loop.max_steps) == expected


def test_aio2_detection_rolls_training_back_to_its_trigger(tmp_path, monkeypatch):
    """The detection on a given curve (the store's score replaced by it) drives the real rollback."""
    curve = [0.10, 0.30, 0.34, 0.35, 0.40, 0.50, 0.60, 0.70]
    expected = detect_transition(curve, (2, 3))
    assert expected is not None and expected.trigger < expected.detected_at < 8
    monkeypatch.setattr(DualEMAStore, "curve_value", lambda self, epoch, score="jaccard": curve[epoch])
    run = tmp_path / "run"
    results = train(compose_train(
        run, "loss=adagc", "loss.window_sizes=[2,3]", "trainer.max_epochs=8", "seed=2",
        "dataset.datamodule.image_size=32", cache_dir=tmp_path / "cache",
    ))  # fmt: skip
    undone = expected.detected_at - expected.trigger
    assert results["epochs_run"] == 8 + undone
    row = next(r for r in _metric_rows(run) if "adagc/trigger_epoch" in r)
    assert int(row["epoch"]) == expected.detected_at
    assert float(row["adagc/trigger_epoch"]) == expected.trigger and float(row["adagc/epochs_rolled_back"]) == undone
    assert (float(row["adagc/dep"]), float(row["adagc/mid"])) == (expected.dep, expected.mid)
    assert {int(k.removeprefix("adagc/vote_w")): float(v) for k, v in row.items() if k.startswith("adagc/vote_w")} == (
        expected.votes
    )
    np.testing.assert_allclose([float(row[f"adagc/fit_{k}"]) for k in "abc"], expected.fit, rtol=1e-5)
    assert (run / "adagc_trigger.png").stat().st_size > 10_000


def test_two_process_ddp_rolls_back_every_rank_to_the_same_state(tmp_path):
    """2 CPU processes (gloo): rank 0 reads the snapshot and broadcasts it; every rank must then hold the
    same student, optimizer and stores, equal to its own state at the start of the trigger epoch (the
    stores' checksums are also compared across ranks at every epoch end, which aborts on a mismatch)."""
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "splml.train", "trainer=ddp_cpu", *ROLLBACK, PROBE, "backbone=resnet10t",
        "dataset.datamodule.synthetic.n_train=48", "dataset.datamodule.synthetic.n_validation=24",
        "dataset.datamodule.synthetic.n_test=24", "dataset.datamodule.max_samples.train=45",
        "dataset.datamodule.batch_size=8", "dataset.datamodule.image_size=32",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
    ]  # fmt: skip
    path = os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 6
    ranks = [_probe(run, rank) for rank in (0, 1)]
    assert ranks[0] == ranks[1], "the ranks hold the same state at the start of every epoch"
    assert ranks[0]["3"] == ranks[0]["1"], "after the rollback, the state of the trigger epoch"
    counts = _callback_states(run / "checkpoints" / "last.ckpt")["DualEMAStore"]["tensors"]["update_count"]
    # 45 samples on 2 ranks (one padded repeat, never counted): recorded once per warm-up epoch;
    # epoch 0 kept, epochs 1 and 2 undone by the rollback to the state after epoch 1.
    assert torch.equal(counts, torch.full((45,), 1, dtype=counts.dtype))
