"""Checkpoints written before the data modules moved still name their old paths: evaluation follows them."""

from __future__ import annotations

from hydra.utils import get_class

from splml.eval import MOVED_TARGETS, _update_moved_targets


def test_every_moved_target_names_a_class_that_exists():
    for old, new in MOVED_TARGETS.items():
        assert get_class(new).__name__ == old.rsplit(".", 1)[-1]


def test_a_stored_config_is_rewritten_to_the_new_paths_only_where_it_names_a_moved_class():
    stored = {
        "dataset": {"datamodule": {"_target_": "splml.data.datamodule.SyntheticReBENDataModule", "bands": "all"}},
        "labels": {"_target_": "splml.data.spml_files.ObservedLabelsFile", "file": "x.npy"},
        "loss": {"_target_": "some.other.Loss", "parts": [{"_target_": "splml.data.image_folders.AIDDataModule"}]},
    }
    updated = _update_moved_targets(stored)
    assert updated["dataset"]["datamodule"] == {
        "_target_": "splml.data.datamodules.reben.SyntheticReBENDataModule",
        "bands": "all",
    }
    assert updated["labels"]["_target_"] == "splml.data.labels.ObservedLabelsFile"
    assert updated["loss"]["_target_"] == "some.other.Loss"
    assert updated["loss"]["parts"][0]["_target_"] == "splml.data.datamodules.image_folders.AIDDataModule"
