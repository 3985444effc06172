"""Config values that cannot work are refused up front, naming the key, before any data is made or read."""

from __future__ import annotations

import pytest

from splml.config_checks import check_run_config
from splml.train import train
from tests.helpers import compose_train


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=0"], r"trainer.max_epochs=0: .*an integer >= 1"),
        (["trainer.max_epochs=-2"], r"trainer.max_epochs=-2: .*an integer >= 1"),
        (["loss=en", "dataset.expected_positives=0"], r"dataset.expected_positives=0: .*loss=en.*> 0"),
        (["loss=epr", "dataset.expected_positives=-1.5"], r"dataset.expected_positives=-1.5: .*> 0"),
        (["loss=role", "dataset.expected_positives=25"], r"dataset.expected_positives=25: .*at most .*19 classes"),
        (["loss=en_scl", "dataset.expected_positives=0"], r"dataset.expected_positives=0: .*loss=en_scl.*> 0"),
        (["dataset.datamodule.image_size=0"], r"dataset.datamodule.image_size=0: .*an integer >= 1"),
        (["dataset.datamodule.image_size=-64"], r"dataset.datamodule.image_size=-64: .*an integer >= 1"),
    ],
)
def test_bad_values_fail_before_any_data_is_generated(tmp_path, overrides, message):
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "cache").exists(), "the synthetic data was generated before the config was checked"


def test_the_expected_positives_of_a_loss_that_does_not_use_them_are_not_checked(tmp_path):
    check_run_config(compose_train(tmp_path, "loss=an", "dataset.expected_positives=0"))


def test_a_loss_given_its_own_expected_positives_is_named_by_its_key(tmp_path):
    cfg = compose_train(tmp_path, "loss=en", "loss.expected_positives=0")
    with pytest.raises(ValueError, match=r"^loss.expected_positives=0: "):
        check_run_config(cfg)


def test_the_part_of_a_composition_is_named_by_its_key(tmp_path):
    cfg = compose_train(tmp_path, "loss=ep_cl", "loss.base.expected_positives=0")
    with pytest.raises(ValueError, match=r"^loss.base.expected_positives=0: loss=ep_cl uses it"):
        check_run_config(cfg)


def test_valid_config_passes_and_evaluation_skips_the_training_keys(tmp_path):
    check_run_config(compose_train(tmp_path, "loss=en", "trainer.max_epochs=1"))
    check_run_config(compose_train(tmp_path, "trainer.max_epochs=0"), training=False)
    with pytest.raises(ValueError, match="dataset.datamodule.image_size=0"):
        check_run_config(compose_train(tmp_path, "dataset.datamodule.image_size=0"), training=False)


def test_a_head_given_to_retrieval_is_refused_naming_both_keys(tmp_path):
    """task=retrieval has no classifier head: head=q2l (or linear) would be ignored, so it is an error."""
    for head, named in (
        ("q2l", "splml.models.q2l.Query2LabelHead"),
        ("linear", "splml.models.model.SpatialLinearHead"),
    ):
        cfg = compose_train(tmp_path, "task=retrieval", f"head={head}")
        with pytest.raises(ValueError, match=rf"^head=<{named}>: task=retrieval has no classifier head"):
            train(cfg)
    assert not (tmp_path / "cache").exists(), "the synthetic data was generated before the config was checked"
    check_run_config(compose_train(tmp_path, "task=retrieval"))  # its default, head=none, passes
    with pytest.raises(ValueError, match=r"^head=none: task=classification needs a classifier head"):
        check_run_config(compose_train(tmp_path, "head=none"))


def test_the_command_line_names_the_head_option_given_to_retrieval(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "task=retrieval", "head=q2l", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "head=q2l: task=retrieval has no classifier head" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "cache").exists()
