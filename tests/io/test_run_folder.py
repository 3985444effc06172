"""The run folder's files: one metrics.csv reader, results.json read strictly or leniently, memory-mapped checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from splml.io.run_folder import (
    RunFolderError,
    load_checkpoint,
    load_results,
    metrics_file,
    read_epoch_metrics,
    read_metric_rows,
    read_results,
    write_results,
)

METRICS = (
    "epoch,step,train/loss,val/mAP_macro,lr-Adam\n"
    "0,9,0.71,,\n"
    "0,9,,41.5,\n"
    ",10,,,0.001\n"
    "1,19,0.52,nan,\n"
    "1,19,,not-a-number,\n"
    "2,29,,47.25,\n"
)


@pytest.fixture
def run_dir(tmp_path):
    csv_dir = tmp_path / "run" / "csv" / "version_0"
    csv_dir.mkdir(parents=True)
    (csv_dir / "metrics.csv").write_text(METRICS)
    return tmp_path / "run"


def test_rows_and_curves_come_from_the_same_reader(run_dir):
    rows = read_metric_rows(metrics_file(run_dir))
    assert rows[0] == {"epoch": 0, "step": 9, "train/loss": 0.71}
    assert rows[2] == {"step": 10, "lr-Adam": 0.001}  # blanks left out, ints stay ints
    curves = read_epoch_metrics(run_dir, ["val/mAP_macro", "train/loss", "absent"])
    assert curves["train/loss"] == {0: 0.71, 1: 0.52}
    assert curves["val/mAP_macro"][0] == 41.5 and curves["val/mAP_macro"][2] == 47.25
    assert curves["val/mAP_macro"][1] != curves["val/mAP_macro"][1]  # nan kept; text left out
    assert curves["absent"] == {}
    assert read_epoch_metrics(run_dir.parent / "no_run", ["val/mAP_macro"]) == {"val/mAP_macro": {}}


def test_results_are_written_atomically_and_read_strictly_or_leniently(tmp_path, caplog):
    path = tmp_path / "results.json"
    write_results(path, {"status": "completed", "test/mAP_macro": 50.0})
    assert load_results(path) == read_results(path) == {"status": "completed", "test/mAP_macro": 50.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    path.write_text('{"status": "compl')
    with pytest.raises(RunFolderError, match=r"results\.json: not valid JSON"):
        load_results(path)
    with caplog.at_level(logging.WARNING):
        assert read_results(path) is None
    assert f"unreadable {path}" in caplog.text
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(RunFolderError, match="not a JSON object"):
        load_results(path)


def test_checkpoints_are_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.arange(6.0)}}, path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: (calls.append(kw), real(*a, **kw))[1])
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(6.0))
    assert calls == [{"map_location": "cpu", "weights_only": False, "mmap": True}]  # tensors stay on disk
