"""experiments/synthetic/rerun_archived.py: which overrides an archived run is trained again with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "synthetic" / "rerun_archived.py"


@pytest.fixture(scope="module")
def rerun_archived():
    spec = importlib.util.spec_from_file_location("rerun_archived", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_archived_run_is_retrained_with_its_run_defining_overrides_only(rerun_archived):
    overrides = rerun_archived.recorded_overrides("labels=random,loss=en_scl,seed=1")
    assert overrides == ["experiment=synthetic_methods", "seed=1", "labels=random", "loss=en_scl"]


def test_a_run_without_recorded_overrides_is_named(rerun_archived, tmp_path, monkeypatch):
    monkeypatch.setattr(rerun_archived, "ARCHIVE", tmp_path)
    (tmp_path / "loss=an,seed=9").mkdir()
    with pytest.raises(FileNotFoundError, match=r"loss=an,seed=9.*no recorded overrides"):
        rerun_archived.recorded_overrides("loss=an,seed=9")


def test_the_table_compares_with_the_archive_and_the_reference(rerun_archived, tmp_path, monkeypatch):
    import json

    for folder, value in (("archive", 50.0), ("new", 50.25), ("old", 50.25)):
        (tmp_path / folder / "r").mkdir(parents=True)
        (tmp_path / folder / "r" / "results.json").write_text(json.dumps({"test/mAP_macro": value}))
    monkeypatch.setattr(rerun_archived, "ARCHIVE", tmp_path / "archive")
    table = rerun_archived.table(["r"], tmp_path / "new", tmp_path / "old", "test/mAP_macro")
    assert "| `r` | 50.250000 | 50.000000 | +2.50e-01 | 50.250000 | +0.00e+00 |" in table
