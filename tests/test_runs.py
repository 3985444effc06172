"""Run folders: results written atomically, job identity, and how a re-run sweep job continues."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from splml.io.run_folder import read_results, write_results
from splml.runs import JobPlan, job_dir_name, plan_job

CHOICES = {"dataset": "synthetic", "labels": "random", "loss": "an", "backbone": "resnet18", "head": "linear"}


def _completed(run: Path, overrides: list[str] | None, seed: int = 1, status: str = "completed", **extra) -> Path:
    result = {"status": status, "seed": seed, "choices": CHOICES, "val/mAP_macro_best": 50.0 + seed, **extra}
    if overrides is not None:
        result["overrides"] = overrides
    write_results(run / "results.json", result)
    return run


def _checkpoint(run: Path, overrides: list[str] | None, epoch: int = 0) -> Path:
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, **({"splml_overrides": overrides} if overrides is not None else {})}, path)
    return path


def test_job_dir_name_is_readable_unique_and_a_valid_file_name():
    assert job_dir_name(["seed=1", "loss=an", "skip_completed=true"]) == "loss=an,seed=1"
    assert job_dir_name(["loss=an", "seed=1"]) == job_dir_name(["seed=1", "loss=an"]), "order does not matter"
    assert job_dir_name([], 7) == "7"
    with_path = job_dir_name(["loss=an", "dataset.root=/data/a"])
    other_path = job_dir_name(["loss=an", "dataset.root=/data/b"])
    assert with_path.startswith("loss=an-") and with_path != other_path and "/" not in with_path
    long = job_dir_name([f"loss.param_{i}=0.123456" for i in range(20)])
    assert len(long) <= 120 and long != job_dir_name([f"loss.param_{i}=0.123457" for i in range(20)])
    assert "/" not in job_dir_name(["tags=[a b]", "name='x y'"]) and " " not in job_dir_name(["tags=[a b]"])


def test_results_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "run" / "results.json"
    write_results(path, {"status": "completed", "value": 1})
    # A write that fails half-way (here: an unserialisable value) leaves the previous file whole.
    with pytest.raises(TypeError):
        write_results(path, {"status": "completed", "value": object()})
    assert json.loads(path.read_text()) == {"status": "completed", "value": 1}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"], "no temporary file left behind"


def test_unreadable_results_are_named_and_the_job_is_rerun(tmp_path, caplog):
    run = tmp_path / "sweep" / "job"
    run.mkdir(parents=True)
    (run / "results.json").write_text('{"status": "completed", "test/mAP_ma')  # killed while writing
    with caplog.at_level(logging.WARNING):
        assert read_results(run / "results.json") is None
        plan = plan_job(run, ["seed=1"], 1, CHOICES, sweep_dir=tmp_path / "sweep")
    assert plan == JobPlan()
    assert str(run / "results.json") in caplog.text


def test_a_job_is_found_completed_only_in_a_run_of_the_same_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    # Folders named by job number: job 1 of the old sweep ran seed=2.
    _completed(sweep / "0", ["loss=an", "seed=1"], seed=1)
    _completed(sweep / "1", ["loss=an", "seed=2"], seed=2)
    # The narrowed sweep's job 0 is seed=2: found in folder 1, not taken from folder 0.
    plan = plan_job(sweep / "new0", ["seed=2", "loss=an", "skip_completed=true"], 2, CHOICES, sweep_dir=sweep)
    assert plan.completed_dir == sweep / "1" and plan.result["val/mAP_macro_best"] == 52.0
    # A job that never ran is not completed, wherever it would be written.
    assert plan_job(sweep / "new1", ["loss=an", "seed=3"], 3, CHOICES, sweep_dir=sweep) == JobPlan()
    # A failed run of the same job is run again.
    _completed(sweep / "2", ["loss=en", "seed=1"], status="failed")
    assert plan_job(sweep / "new2", ["loss=en", "seed=1"], 1, CHOICES, sweep_dir=sweep) == JobPlan()


def test_a_completed_run_of_another_job_is_not_overwritten(tmp_path):
    run = _completed(tmp_path / "sweep" / "0", ["loss=an", "seed=1"])
    before = (run / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"holds the completed run of another job \(loss=an,seed=1\)"):
        plan_job(run, ["loss=an", "seed=3"], 3, CHOICES, sweep_dir=tmp_path / "sweep")
    assert (run / "results.json").read_bytes() == before


def test_runs_written_before_overrides_were_recorded_match_on_seed_and_choices(tmp_path):
    sweep = tmp_path / "sweep"
    own = _completed(sweep / "loss=an,seed=1", None, seed=1)
    assert plan_job(own, ["loss=an", "seed=1"], 1, CHOICES, sweep_dir=sweep).completed_dir == own
    with pytest.raises(FileExistsError, match="seed=1"):
        plan_job(own, ["loss=an", "seed=2"], 2, CHOICES, sweep_dir=sweep)
    # Elsewhere in the sweep folder their .hydra/overrides.yaml says which job they were.
    other = _completed(sweep / "3", None, seed=4)
    (other / ".hydra").mkdir()
    (other / ".hydra" / "overrides.yaml").write_text("- loss=an\n- seed=4\n- skip_completed=true\n")
    assert plan_job(sweep / "new", ["seed=4", "loss=an"], 4, CHOICES, sweep_dir=sweep).completed_dir == other


def test_a_killed_job_resumes_from_its_last_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    own = sweep / "loss=an,seed=1"
    ckpt = _checkpoint(own, ["loss=an", "seed=1"])
    assert plan_job(own, ["seed=1", "loss=an"], 1, CHOICES, sweep_dir=sweep) == JobPlan(resume_from=ckpt)
    # Killed in another folder (job-number folders, lists changed since): resumed from there.
    elsewhere = _checkpoint(sweep / "5", ["loss=an", "seed=2"], epoch=3)
    _checkpoint(sweep / "6", ["loss=an", "seed=2"], epoch=1)
    assert plan_job(sweep / "new", ["loss=an", "seed=2"], 2, CHOICES, sweep_dir=sweep).resume_from == elsewhere
    # Not from a run that failed, nor from a checkpoint that does not say which job it belongs to.
    _completed(sweep / "5", ["loss=an", "seed=2"], status="failed")
    assert plan_job(sweep / "new", ["loss=an", "seed=2"], 2, CHOICES, sweep_dir=sweep).resume_from == (
        sweep / "6" / "checkpoints" / "last.ckpt"
    )
    unknown = sweep / "old"
    _checkpoint(unknown, None)
    assert plan_job(unknown, ["loss=an", "seed=7"], 7, CHOICES, sweep_dir=sweep) == JobPlan()
    # Another job's checkpoint in this job's folder is not overwritten.
    with pytest.raises(FileExistsError, match="checkpoint of another job"):
        plan_job(own, ["loss=an", "seed=9"], 9, CHOICES, sweep_dir=sweep)


def test_missing_best_checkpoint_of_a_resumed_run_is_a_clear_error(tmp_path):
    from splml.callbacks.checkpoint import ResumableModelCheckpoint

    callback = ResumableModelCheckpoint(dirpath=str(tmp_path / "new"), monitor="val/mAP_macro", mode="max")
    old = str(tmp_path / "old" / "checkpoints" / "best.ckpt")
    state = {**callback.state_dict(), "dirpath": str(tmp_path / "old" / "checkpoints"), "best_model_path": old,
             "kth_best_model_path": old, "best_model_score": torch.tensor(60.0), "best_k_models": {old: torch.tensor(60.0)}}  # fmt: skip
    with pytest.raises(FileNotFoundError, match="best checkpoint best.ckpt"):
        callback.load_state_dict(state)
    # Present: copied into the new folder, with its score.
    Path(old).parent.mkdir(parents=True)
    Path(old).write_bytes(b"weights")
    callback.load_state_dict(state)
    assert callback.best_model_path == str(tmp_path / "new" / "best.ckpt")
    assert (tmp_path / "new" / "best.ckpt").read_bytes() == b"weights"
    assert float(callback.best_model_score) == 60.0 and callback.kth_best_model_path == callback.best_model_path


def test_sweep_summary_counts_completed_failed_and_unreadable_runs(tmp_path, caplog):
    from splml.hydra_callbacks import summarize_sweep

    _completed(tmp_path / "a", ["seed=1"])
    _completed(tmp_path / "b", ["seed=2"], status="failed", error="FloatingPointError: loss is nan")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        lines = summarize_sweep(tmp_path)
    assert lines[0] == f"sweep {tmp_path}: 1 completed, 1 failed, 1 unreadable"
    assert "- failed: b: FloatingPointError: loss is nan" in lines
    assert "- unreadable: c/results.json (skip_completed=true re-runs it)" in lines
    assert str(tmp_path / "c" / "results.json") in caplog.text
