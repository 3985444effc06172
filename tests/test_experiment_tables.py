"""The experiment configs that reproduce the published tables: what they sweep, and that a sweep runs."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from splml.builders import config_dir, register_resolvers

from .helpers import run_train_cli

# Method rows of the published tables (shared/specs/reference-results.md), as loss names.
PUBLISHED = {
    "table_spatial_consistency": (
        {"voc", "coco", "nuswide", "cub"},
        {"full", "an", "an_ls", "wan", "role", "en", "en_cl", "en_scl"},
    ),
    "table_large_loss": (
        {"voc", "coco", "nuswide", "cub"},
        {"full", "an", "wan", "an_ls", "epr", "role", "ll_r", "ll_ct", "ll_cp"},
    ),
}
ADAGC_SETTINGS = ("adagc_ben_random", "adagc_ben_dominant", "adagc_aid_random", "adagc_aid_manual")


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def _swept(cfg, key: str) -> set[str]:
    return set(str(cfg.hydra.sweeper.params[key]).split(","))


@pytest.mark.parametrize("table", sorted(PUBLISHED))
def test_table_configs_sweep_the_published_datasets_methods_and_three_seeds(table):
    datasets, methods = PUBLISHED[table]
    cfg = _compose(f"experiment={table}")
    assert _swept(cfg, "dataset") == datasets
    assert _swept(cfg, "loss") == methods
    assert _swept(cfg, "seed") == {"1", "2", "3"}
    assert cfg.backbone.name == "resnet50" and cfg.backbone.pretrained
    # Every swept method and dataset composes in this preset.
    for dataset in datasets:
        for loss in methods:
            assert _compose(f"experiment={table}", f"dataset={dataset}", f"loss={loss}").loss._target_


def test_spatial_consistency_table_uses_the_papers_linear_probe_recipe():
    cfg = _compose("experiment=table_spatial_consistency")
    assert (cfg.optim.linear_probe_epochs, cfg.optim.linear_probe_lr, cfg.optim.lr) == (5, 1e-3, 1e-5)
    assert cfg.optim.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optim.scheduler._target_ == "splml.optim.linear_probe_warmup_cosine"
    assert cfg.trainer.max_epochs == 30 and list(cfg.dataset.datamodule.augment.crop_scale) == [0.25, 1.0]
    # CL / SCL start after the linear probe.
    assert _compose("experiment=table_spatial_consistency", "loss=en_scl").loss.start_epoch == 5


@pytest.mark.parametrize("table", sorted(PUBLISHED))
def test_synthetic_counterpart_sweeps_the_same_methods_on_cpu(table):
    real, synthetic = _compose(f"experiment={table}"), _compose(f"experiment={table}_synthetic")
    assert _swept(synthetic, "loss") == _swept(real, "loss") and _swept(synthetic, "seed") == _swept(real, "seed")
    assert synthetic.dataset.name == "synthetic" and synthetic.trainer.accelerator == "cpu"
    methods = _compose("experiment=synthetic_methods")
    for key in ("dataset", "backbone", "optim", "trainer"):
        assert synthetic[key] == methods[key], key


@pytest.mark.parametrize("setting", ADAGC_SETTINGS)
def test_adagc_settings_sweep_adagc_and_its_comparison_methods(setting):
    cfg = _compose(f"experiment={setting}")
    assert _swept(cfg, "loss") == {"adagc", "an", "en", "en_scl", "ll_r", "em_apl", "full"}
    assert _swept(cfg, "seed") == {"1", "2", "3"}


def test_command_line_narrows_a_table_sweep(tmp_path):
    # The table lists 9 methods x 3 seeds; the command line replaces the lists it names.
    sweep = tmp_path / "sweep"
    run_train_cli(
        tmp_path, "-m", "experiment=table_large_loss_synthetic", "loss=an,ll_r", "seed=1",
        "trainer.max_epochs=1", "dataset.datamodule.synthetic.n_train=48", "dataset.datamodule.synthetic.n_validation=24",
        "dataset.datamodule.synthetic.n_test=24", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
        timeout=600,
    )  # fmt: skip
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert sorted(r["choices"]["loss"] for r in results) == ["an", "ll_r"]
    assert all(r["status"] == "completed" and r["choices"]["labels"] == "random" for r in results)
