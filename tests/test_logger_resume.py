"""A run resumed into a new folder continues its W&B run and shows its whole history in TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .helpers import read_wandb_records, run_train_cli
from .image_support import REPO

COMMON = [
    "dataset.datamodule.synthetic.n_train=48", "dataset.datamodule.synthetic.n_validation=24",
    "dataset.datamodule.synthetic.n_test=24", "dataset.datamodule.batch_size=16", "backbone=resnet10t",
    "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "~callbacks.progress_bar",
    "logger=[wandb,tensorboard]", "seed=3",
]  # fmt: skip
STOP_AFTER_FIRST_EPOCH = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1"]


def wandb_run_id(run_dir: Path) -> str:
    """The id of the (one) offline W&B run of a run folder, as its files record it."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("*.wandb")
    ids = {r.run.run_id for r in read_wandb_records(run_file) if r.HasField("run")}
    assert len(ids) == 1 and offline.name.endswith(f"-{next(iter(ids))}")
    return ids.pop()


def scalar_steps(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # NaN points are the HParams table's placeholders (a resumed run logs its own at its first step).
    return {
        tag: [(e.step, round(e.value, 4)) for e in events.Scalars(tag) if not math.isnan(e.value)]
        for tag in events.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("logger_resume")
    cache = f"paths.cache_dir={base / 'cache'}"
    folders = {name: base / name for name in ("straight", "first", "resumed")}
    # From the repository (the stop callback is a class of tests.helpers); each run writes into its folder.
    run_train_cli(REPO, *COMMON, cache, f"hydra.run.dir={folders['straight']}")
    run_train_cli(REPO, *COMMON, cache, *STOP_AFTER_FIRST_EPOCH, f"hydra.run.dir={folders['first']}")
    last = folders["first"] / "checkpoints" / "last.ckpt"
    run_train_cli(REPO, *COMMON, cache, f"ckpt_path={last}", f"hydra.run.dir={folders['resumed']}")
    return folders


@pytest.mark.slow
def test_the_resumed_run_continues_the_same_wandb_run(runs):
    first = wandb_run_id(runs["first"])
    assert wandb_run_id(runs["resumed"]) == first
    assert wandb_run_id(runs["straight"]) != first  # ids are not all the same anyway


@pytest.mark.slow
def test_tensorboard_of_the_resumed_run_holds_every_epoch_as_the_uninterrupted_run(runs):
    straight, resumed = scalar_steps(runs["straight"]), scalar_steps(runs["resumed"])
    assert {"val/mAP_macro", "train/loss", "lr-Adam/backbone"} <= set(straight)
    for tag in ("val/mAP_macro", "train/loss", "epoch", "lr-Adam/backbone", "lr-Adam/head"):
        assert resumed[tag] == straight[tag], tag
    assert [step for step, _ in straight["val/mAP_macro"]] == [2, 5]  # both epochs
