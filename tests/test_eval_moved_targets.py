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


def _archived_loss_configs() -> dict[str, dict]:
    """The ``loss`` node of every archived benchmark run, by method (written before the losses moved)."""
    import json
    from pathlib import Path

    synthetic = Path(__file__).resolve().parents[1] / "experiments" / "synthetic"
    found: dict[str, dict] = {}
    for results in sorted([*synthetic.glob("runs/*/results.json"), *synthetic.glob("runs_long/*/results.json")]):
        data = json.loads(results.read_text())
        loss = data["config"]["loss"]
        if str(loss.get("_target_", "")).startswith("splml.losses."):
            found.setdefault(data["choices"]["loss"], loss)
    return found


def test_every_loss_of_an_older_checkpoint_still_builds_under_its_name():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    archived = _archived_loss_configs()
    assert {"an", "en_scl", "en_cl", "role", "ll_cp", "em_apl", "adagc"} <= set(archived)
    for name, node in archived.items():
        loss = instantiate(OmegaConf.create(_update_moved_targets(node)))
        assert loss.name == name, name


def test_an_older_combination_becomes_the_same_composition_as_its_yaml():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from splml.builders import loss_config

    old = _archived_loss_configs()["en_scl"]
    rebuilt = instantiate(OmegaConf.create(_update_moved_targets(old)))
    values = {"dataset": {"expected_positives": old["expected_positives"]}, "optim": {"linear_probe_epochs": 0}}
    today = instantiate(OmegaConf.merge(OmegaConf.create(values), loss_config("en_scl")).loss)
    assert type(rebuilt) is type(today)
    assert (type(rebuilt.base), type(rebuilt.term)) == (type(today.base), type(today.term))
    assert (rebuilt.gamma, rebuilt.start_epoch) == (today.gamma, today.start_epoch)
    assert rebuilt.base.expected_positives == today.base.expected_positives
    assert vars(rebuilt.term).keys() == vars(today.term).keys()
