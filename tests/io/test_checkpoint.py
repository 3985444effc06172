"""The checkpoint's own entries: the data spec (record, round trip, comparison) and the stored config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splml.io.checkpoint import (
    DataSpec,
    read_data_spec,
    read_logger_run,
    stored_run_config,
    write_data_spec,
    write_logger_runs,
)
from splml.io.errors import DataFormatError


def spec(**changes) -> DataSpec:
    fields = {
        "task": "classification", "class_names": ("a", "b", "c"), "bands": ("B04", "B03", "B02"), "image_size": 120,
        "resize": "nearest", "mean": (588.41, 614.06, 438.37), "std": (684.57, 603.3, 607.03), "value_scale": 1.0,
        "value_range": {"s2": (0.0, 65535.0), "s1": (-100.0, 60.0)}, "input_format": "reben",
        "backbone": "resnet18", "head": "SpatialLinearHead",
    }  # fmt: skip
    return DataSpec(**{**fields, **changes})


def test_a_record_survives_the_checkpoint_and_json_and_compares_equal():
    checkpoint: dict = {}
    write_data_spec(checkpoint, spec())
    again = read_data_spec(json.loads(json.dumps(checkpoint)))
    assert again == spec() and again.diff(spec()) == []
    assert again.num_channels == 3 and again.num_classes == 3


def test_diff_names_each_field_that_differs_with_both_values():
    lines = spec().diff(spec(bands=("B02", "B03", "B04"), image_size=64), names=("checkpoint", "data"))
    assert lines == [
        "bands: checkpoint ['B04', 'B03', 'B02'], data ['B02', 'B03', 'B04']",
        "image_size: checkpoint 120, data 64",
    ]
    # The statistics follow the bands: a reordered band list with its statistics reordered differs only there.
    assert spec().diff(spec(mean=(588.41, 614.06, 438.3700001))) == []


def test_a_checkpoint_without_a_record_reads_as_none_and_a_broken_record_is_named():
    assert read_data_spec({}) is None
    record = spec().to_dict()
    del record["bands"]
    record["colour"] = "blue"
    with pytest.raises(DataFormatError, match=r"best.ckpt: data spec record with missing entries \['bands'\] / unknown "
                                              r"entries \['colour'\]"):  # fmt: skip
        read_data_spec({"splml_data_spec": record}, where="best.ckpt")


def test_statistics_must_match_the_bands():
    with pytest.raises(ValueError, match="3 bands but 2 means"):
        spec(mean=(1.0, 2.0))


def test_stored_config_updates_moved_paths_and_a_foreign_checkpoint_is_refused():
    stored = {"dataset": {"datamodule": {"_target_": "splml.data.datamodule.SyntheticReBENDataModule"}}}
    config = stored_run_config({"splml_config": stored}, Path("x.ckpt"))
    assert config["dataset"]["datamodule"]["_target_"] == "splml.data.datamodules.reben.SyntheticReBENDataModule"
    with pytest.raises(DataFormatError, match="other.ckpt was not written by splml.train"):
        stored_run_config({"state_dict": {}}, Path("other.ckpt"))


def test_logger_run_ids():
    checkpoint: dict = {}
    write_logger_runs(checkpoint, {})
    assert read_logger_run(checkpoint, "wandb") is None
    write_logger_runs(checkpoint, {"wandb": "abc123"})
    assert read_logger_run(checkpoint, "wandb") == "abc123"
