"""A short MACL run learns: its projection retrieves better than the untrained network's."""

from __future__ import annotations

import csv
from pathlib import Path

from splml.train import train
from tests.helpers import compose_train

SETTING = [
    "task=retrieval", "loss=macl", "labels=full", "dataset.datamodule.synthetic.n_train=160",
    "dataset.datamodule.synthetic.n_validation=40", "dataset.datamodule.synthetic.n_test=60",
    "dataset.datamodule.image_size=32", "dataset.datamodule.batch_size=32", "dataset.datamodule.num_workers=0",
    "task.module.grid_queries=0", "task.embedding=projection", "seed=1",
]  # fmt: skip


def _run(tmp_path: Path, name: str, *overrides: str) -> dict:
    return train(compose_train(tmp_path / name, *SETTING, *overrides, cache_dir=tmp_path / "cache"))


def _last_similarity(run_dir: Path) -> float:
    rows = [r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("train/similarity_mean")]
    return float(rows[-1]["train/similarity_mean"])


def test_a_short_macl_run_beats_the_untrained_network(tmp_path):
    """4 epochs on 160 patches, ranking by the projection z the loss shapes (test mAP@all).

    Measured: seed 1, MACL 66.2 against 60.4 untrained (seed 2: 65.0 vs 61.7). The formula read
    with per-candidate temperatures (loss.denominator=pair) stays at the untrained level (60.5;
    62.0) with a collapsing projection (mean cosine of z in a batch 0.996 in the last epoch).
    """
    trained = _run(tmp_path, "macl", "trainer.max_epochs=4")
    untrained = _run(tmp_path, "untrained", "optim.lr=0", "trainer.max_epochs=1")
    assert trained["test/mAP@all"] > untrained["test/mAP@all"] + 2.0, (trained["test/mAP@all"],
                                                                      untrained["test/mAP@all"])  # fmt: skip
    assert _last_similarity(tmp_path / "macl") < 0.99, "the projection is collapsing"
