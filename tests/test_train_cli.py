"""End to end through the real command line: Hydra composition, training, results, eval."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splml.runs import job_dir_name

from .helpers import read_wandb_records

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "dataset.datamodule.synthetic.n_train=48",
    "dataset.datamodule.synthetic.n_validation=24",
    "dataset.datamodule.synthetic.n_test=24",
    "dataset.datamodule.batch_size=16",
    "backbone=resnet10t",
    "trainer.max_epochs=2",
]


def _env(**extra: str) -> dict[str, str]:
    # The repository on the path, so that configs can name test callbacks (tests.helpers.*).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **extra}


def _run(module: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = _env()
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    run_dir = base / "run"
    _run(
        "splml.train", *TINY, f"paths.cache_dir={base / 'cache'}", f"hydra.run.dir={run_dir}",
        "labels=random", "loss=an", "seed=3", cwd=base,
    )  # fmt: skip
    return run_dir


def test_train_writes_results_config_checkpoints_and_metrics(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    for key in ("test/mAP_macro", "test/mAP_micro", "test/F1_macro", "val/mAP_macro_best", "best_epoch", "seed"):
        assert key in results, key
    assert 0 <= results["test/mAP_macro"] <= 100
    assert results["seed"] == 3
    assert results["choices"]["dataset"] == "synthetic"
    assert results["choices"]["labels"] == "random"
    assert results["choices"]["loss"] == "an"
    assert results["choices"]["backbone"] == "resnet10t"
    assert results["best_epoch"] in (0, 1)
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    metrics_csv = (trained_run / "csv" / "metrics.csv").read_text()
    assert "val/mAP_macro" in metrics_csv and "train/loss" in metrics_csv
    assert (trained_run / "observed_train_labels.npy").is_file()


def test_results_record_their_provenance(trained_run):
    """Library versions, the code's commit and whether it had changes, the machine, the trainer as run."""
    import lightning
    import timm
    import torch
    import torchmetrics

    import splml

    provenance = json.loads((trained_run / "results.json").read_text())["provenance"]
    assert provenance["versions"] == {
        "splml": splml.__version__, "torch": torch.__version__, "lightning": lightning.__version__,
        "timm": timm.__version__, "torchmetrics": torchmetrics.__version__, "python": provenance["versions"]["python"],
    }  # fmt: skip
    source = Path(splml.__file__).resolve().parents[2]
    git = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert provenance["git"]["commit"] == git.stdout.strip() and isinstance(provenance["git"]["dirty"], bool)
    assert provenance["device"] == "cpu" and provenance["precision"] == "32-true" and provenance["world_size"] == 1
    assert provenance["host"] and provenance["command"][1:4] == TINY[:3]
    trainer = provenance["trainer"]
    assert (
        trainer["_target_"] == "lightning.Trainer" and trainer["max_epochs"] == 2 and trainer["deterministic"] is True
    )


def test_eval_from_checkpoint_reproduces_test_metrics(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    _run("splml.eval", f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", f"output_file={out}",
         f"hydra.run.dir={tmp_path / 'eval_run'}", cwd=tmp_path)  # fmt: skip
    evaluated = json.loads(out.read_text())
    trained = json.loads((trained_run / "results.json").read_text())
    for key in ("test/mAP_macro", "test/mAP_micro", "test/F1_macro", "test/precision@1"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-4), key


def test_config_typo_is_a_clear_error(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "loss=ann", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Could not find 'loss/ann'" in proc.stderr


def test_zero_epochs_is_a_clear_error_before_any_data_is_made(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "trainer.max_epochs=0", f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ValueError: trainer.max_epochs=0: the number of training epochs must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_cfg_job_introspection(tmp_path):
    proc = _run("splml.train", "--cfg", "job", "loss=full", "labels=full", cwd=tmp_path)
    assert "FullLabelLoss" in proc.stdout and "FullLabels" in proc.stdout


def _wandb_config_and_history(run_file: Path) -> tuple[dict, list[dict]]:
    """The config a W&B run file received (merged updates) and its logged rows."""
    config: dict = {}
    rows: list[dict] = []
    for record in read_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        updates = record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        config.update({item.key: json.loads(item.value_json) for item in updates})
        if kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return config, rows


def test_wandb_offline_run_gets_config_learning_rates_and_label_quality_plot(tmp_path):
    run_dir = tmp_path / "run"
    # LL-Ct corrects labels from the second epoch on, so it logs label-quality diagnostics.
    _run(
        "splml.train", *TINY, "trainer.max_epochs=2", "loss=ll_ct", "logger=wandb", "trainer.log_every_n_steps=1",
        "optim.head_lr_mult=10", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert (run_dir / "results.json").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((run_dir / "wandb").iterdir())
    run_files = list(offline_runs[0].glob("*.wandb"))
    assert run_files, "the offline run holds its W&B event file"
    assert (run_dir / "label_quality.png").stat().st_size > 0
    images = list(offline_runs[0].rglob("label_quality_*.png"))
    assert images, "the label-quality figure is logged to the W&B run"

    config, rows = _wandb_config_and_history(run_files[0])
    # The whole resolved config, nested as in .hydra/config.yaml.
    assert config["optim"]["lr"] == 1e-3 and config["optim"]["head_lr_mult"] == 10
    assert config["loss"]["_target_"] == "splml.methods.large_loss.ll_ct.LargeLossTemporaryCorrection"
    assert config["trainer"]["max_epochs"] == 2 and config["seed"] == 1
    assert config["paths"]["output_dir"] == str(run_dir)
    # One learning-rate curve per parameter group; the cosine schedule starts at the base rate.
    backbone = [row["lr-Adam/backbone"] for row in rows if "lr-Adam/backbone" in row]
    head = [row["lr-Adam/head"] for row in rows if "lr-Adam/head" in row]
    assert len(backbone) == len(head) == 6, "one value per training step (2 epochs x 3 batches)"
    assert backbone[0] == pytest.approx(1e-3) and head[0] == pytest.approx(1e-2)
    assert backbone[-1] < backbone[0], "the cosine schedule decays"


def test_label_quality_plot_is_skipped_for_methods_without_extra_positives(trained_run):
    # loss=an adds no positives: no figure rather than an empty one.
    assert not (trained_run / "label_quality.png").exists()


def test_multirun_records_a_failed_job_and_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    _run(
        "splml.train", "-m", *TINY, "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}", "dataset.datamodule.bands=bogus,rgb", cwd=tmp_path,
    )  # fmt: skip
    # One folder per job, named by its overrides.
    fixed = [*TINY[:-1], "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}"]
    bogus, rgb = (sweep / job_dir_name([*fixed, f"dataset.datamodule.bands={b}"]) for b in ("bogus", "rgb"))
    failed = json.loads((bogus / "results.json").read_text())
    assert failed["status"] == "failed" and "unknown band set 'bogus'" in failed["error"]
    done = json.loads((rgb / "results.json").read_text())
    assert done["status"] == "completed" and done["test/mAP_macro"] > 0
    # The sweep ends with a summary naming the failed job and its error.
    summary = (sweep / "sweep_summary.md").read_text()
    assert "1 completed, 1 failed" in summary and f"- failed: {bogus.name}: " in summary and "bogus" in summary

    # Re-running the sweep with skip_completed only re-runs what did not complete.
    stamp = (rgb / "results.json").stat().st_mtime_ns
    proc = _run(
        "splml.train", "-m", *TINY, "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}", "dataset.datamodule.bands=bogus,rgb", "skip_completed=true", cwd=tmp_path,
    )  # fmt: skip
    assert (rgb / "results.json").stat().st_mtime_ns == stamp
    assert f"{rgb} holds a completed run of this job" in proc.stdout + proc.stderr


def test_rerun_sweep_resumes_killed_jobs_and_skips_only_jobs_that_completed(tmp_path):
    sweep = tmp_path / "sweep"
    common = [
        *TINY, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
        "+callbacks.exit._target_=tests.helpers.ExitAtEpoch", "+callbacks.exit.epoch=1",
    ]  # fmt: skip
    overrides = [o for o in common if not o.startswith("hydra.")]
    seed1, seed2, seed3 = (sweep / job_dir_name([*overrides, f"seed={seed}"]) for seed in (1, 2, 3))
    # The sweep is killed while its second job (seed 2) trains its second epoch.
    killed = subprocess.run(
        [sys.executable, "-m", "splml.train", "-m", *common, "seed=1,2"], cwd=tmp_path,
        env=_env(SPLML_TEST_EXIT_IN=seed2.name), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert (seed2 / "checkpoints" / "last.ckpt").is_file()
    assert not (seed2 / "results.json").exists()
    stamp = (seed1 / "results.json").stat().st_mtime_ns

    # Re-run with other lists: seed 3 never ran, seed 2 was killed, seed 1 completed.
    proc = _run("splml.train", "-m", *common, "seed=3,2,1", "skip_completed=true", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert f"{seed1} holds a completed run of this job" in log
    assert (seed1 / "results.json").stat().st_mtime_ns == stamp
    assert f"resuming the interrupted run of this job from {seed2 / 'checkpoints' / 'last.ckpt'}" in log
    resumed = json.loads((seed2 / "results.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["overrides"] == sorted([*overrides, "seed=2"])
    with open(seed2 / "csv" / "metrics.csv") as fh:
        val_epochs = [row["epoch"] for row in csv.DictReader(fh) if row.get("val/mAP_macro")]
    assert val_epochs == ["0", "1"], "the killed epoch is trained once, after the one before it"
    fresh = json.loads((seed3 / "results.json").read_text())
    assert fresh["seed"] == 3 and fresh["status"] == "completed" and fresh["resumed_from"] is None


def test_ben_dataset_reads_real_format_files_with_dominant_labels(tiny_reben, tmp_path):
    run_dir = tmp_path / "run"
    _run(
        "splml.train", "dataset=ben", f"dataset.root={tiny_reben}", "labels=dominant", "loss=an",
        "dataset.datamodule.num_workers=0", "dataset.datamodule.batch_size=16", "backbone=resnet10t",
        "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert results["choices"]["dataset"] == "ben" and results["choices"]["labels"] == "dominant"
    assert results["test/num_samples"] == 24


def test_ben_dataset_without_files_names_the_missing_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "dataset=ben", f"dataset.root={tmp_path / 'nowhere'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"dataset root {tmp_path / 'nowhere'} does not exist" in proc.stderr


def _evaluate_in_process(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from splml.builders import config_dir, register_resolvers
    from splml.eval import evaluate

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=[f"output_file={tmp_path / 'eval.json'}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return evaluate(cfg)


def test_eval_with_overrides_that_change_the_model_names_the_mismatch(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError) as info:
        _evaluate_in_process(tmp_path, f"ckpt_path={ckpt}", "+dataset_overrides.bands=rgb")
    message = str(info.value)
    assert str(ckpt) in message and "do not fit" in message
    # The first layer's shapes, what the weights need, and the override that broke it.
    assert "model.backbone.conv1.0.weight: checkpoint (24, 12, 3, 3), model (24, 3, 3, 3)" in message
    assert "12 input channels" in message and "dataset.datamodule.bands=rgb gives 3" in message
    assert "'all'" in message  # a band set of 12 bands
    assert "dataset_overrides" in message and "bands=rgb" in message
    assert not (tmp_path / "eval.json").exists()


def test_eval_of_weights_from_another_backbone_names_the_keys(trained_run, tmp_path):
    import torch

    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    ckpt["splml_config"]["backbone"]["name"] = "resnet18"  # the stored config no longer matches the weights
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    with pytest.raises(ValueError) as info:
        _evaluate_in_process(tmp_path, f"ckpt_path={edited}")
    message = str(info.value)
    assert str(edited) in message and "backbone=resnet18" in message
    assert "missing from the checkpoint: model.backbone.conv1.weight" in message
    assert "not in the model: model.backbone.conv1.0.weight" in message
    assert "another architecture" in message


def test_eval_refuses_a_bad_image_size_override_up_front(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match=r"dataset.datamodule.image_size=0: "):
        _evaluate_in_process(tmp_path, f"ckpt_path={ckpt}", "+dataset_overrides.image_size=0")
