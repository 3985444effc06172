"""Resuming a run into another folder gives the results of the uninterrupted run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from splml.train import train

from .helpers import compose_train


class DecliningValidationScore:
    """Replaces the monitored ``val/mAP_macro`` by ``start - epoch`` just before the checkpoints see it.

    The best epoch is then always the first one, before any interruption: a resumed run that
    forgets the best score so far picks a later epoch.
    """

    def __new__(cls, start: float = 50.0):  # built by Hydra from a config node; returns a real Callback
        import torch

        class _Declining(L.Callback):
            def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if not trainer.sanity_checking:
                    trainer.callback_metrics["val/mAP_macro"] = torch.tensor(start - trainer.current_epoch)

        return _Declining()


def _metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


COMMON = [
    "loss=an",
    "seed=4",
    "trainer.max_epochs=2",
    "+callbacks.declining._target_=tests.test_resume.DecliningValidationScore",
]
STOP_AFTER_FIRST_EPOCH = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("straight")
    return tmp / "run", train(compose_train(tmp / "run", *COMMON, cache_dir=tmp / "cache"))


@pytest.mark.parametrize("source", ["folder-moved", "checkpoint-copied-alone"])
def test_resume_into_a_new_folder_equals_the_uninterrupted_run(tmp_path, straight_run, source):
    """The interrupted run's folder was moved (its files are found next to the checkpoint), or its
    last.ckpt alone was copied elsewhere (they are found where the checkpoint says the run was)."""
    straight_dir, straight = straight_run
    assert straight["best_epoch"] == 0, "the setting must have its best epoch before the interruption"
    cache = straight_dir.parent / "cache"
    train(compose_train(tmp_path / "first", *COMMON, *STOP_AFTER_FIRST_EPOCH, cache_dir=cache))
    if source == "folder-moved":
        interrupted = tmp_path / "elsewhere" / "first"
        shutil.move(tmp_path / "first", interrupted)
        resume_from = interrupted / "checkpoints" / "last.ckpt"
    else:
        interrupted = tmp_path / "first"
        resume_from = tmp_path / "copied" / "last.ckpt"
        resume_from.parent.mkdir()
        shutil.copy(interrupted / "checkpoints" / "last.ckpt", resume_from)
    before = {p: p.read_bytes() for p in sorted(interrupted.rglob("*")) if p.is_file()}
    resumed = train(compose_train(tmp_path / "second", *COMMON, f"ckpt_path={resume_from}", cache_dir=cache))

    assert resumed["best_epoch"] == straight["best_epoch"] == 0
    assert resumed["val/mAP_macro_best"] == straight["val/mAP_macro_best"]
    for metric in ("test/mAP_macro", "test/mAP_micro", "test/F1_macro"):
        assert resumed[metric] == pytest.approx(straight[metric], abs=1e-6), metric
    # The best checkpoint was carried into the new run, which no longer depends on the old folder.
    assert Path(resumed["best_checkpoint"]) == tmp_path / "second" / "checkpoints" / "best.ckpt"
    assert json.loads((tmp_path / "second" / "results.json").read_text())["best_epoch"] == 0
    # The metrics log holds every epoch once, as the uninterrupted run's does.
    rows, straight_rows = _metric_rows(tmp_path / "second"), _metric_rows(straight_dir)
    assert [sorted(r) for r in rows] == [sorted(r) for r in straight_rows]
    for row, straight_row in zip(rows, straight_rows, strict=True):
        assert row["epoch"] == straight_row["epoch"] and row["step"] == straight_row["step"]
        for key, value in row.items():
            assert float(value) == pytest.approx(float(straight_row[key]), abs=1e-6), key
    assert np.array_equal(np.load(tmp_path / "second" / "observed_train_labels.npy"),
                          np.load(straight_dir / "observed_train_labels.npy"))  # fmt: skip
    # The interrupted run's folder is left as it was.
    assert {p: p.read_bytes() for p in sorted(interrupted.rglob("*")) if p.is_file()} == before
