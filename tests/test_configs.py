"""Every option of every config group composes and builds its object, as the CLI would."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from splml.builders import build_callbacks, build_loggers, config_dir, register_resolvers
from splml.methods.base import SPMLLoss

CONF = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cli(tmp_path: Path, *overrides: str):
    """Compose with the Hydra runtime config set, so ${hydra:...} interpolations resolve."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_groups_are_present():
    for group, expected in {
        "dataset": {"synthetic", "ben"},
        "labels": {"random", "dominant", "full", "manual"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_cpu"},
        "logger": {"csv", "wandb", "tensorboard"},
        "backbone": {"resnet18", "resnet101"},
        "head": {"linear", "boostlu", "q2l", "none"},
        "loss": {"full", "an"},
        "debug": {"fast"},
        "task": {"classification", "retrieval"},
    }.items():
        assert expected <= set(options(group)), group


@pytest.mark.parametrize("loss", options("loss"))
def test_every_loss_builds_with_its_stores(tmp_path, loss):
    cfg = compose_cli(tmp_path, f"loss={loss}")
    obj = instantiate(cfg.loss)
    assert isinstance(obj, SPMLLoss)
    assert obj.name == loss
    callbacks = obj.callbacks(num_samples=10, num_classes=19)
    provided = {type(c).__name__ for c in callbacks}
    if obj.requires_extras:
        assert provided, f"{loss} needs {obj.requires_extras} but declares no store callback"


@pytest.mark.parametrize("labels", options("labels"))
def test_every_label_source_builds(tmp_path, labels):
    extra = [f"labels.file={tmp_path / 'manual.csv'}"] if labels == "manual" else []
    if labels == "observed_file":
        extra = ["dataset=coco"]
    cfg = compose_cli(tmp_path, f"labels={labels}", *extra)
    assert instantiate(cfg.labels).name == labels


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_builds_its_datamodule(tmp_path, dataset):
    cfg = compose_cli(tmp_path, f"dataset={dataset}")
    dm = instantiate(cfg.dataset.datamodule, labels=instantiate(cfg.labels), _convert_="all")
    assert dm.num_classes == cfg.dataset.num_classes
    assert dm.num_channels == (12 if dataset in ("ben", "synthetic") else 3)


@pytest.mark.parametrize("backbone", options("backbone"))
def test_every_backbone_builds_offline(tmp_path, backbone):
    cfg = compose_cli(tmp_path, f"backbone={backbone}")
    model = instantiate(cfg.backbone, in_chans=12)
    assert model.num_features > 0


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_cpu_trainers_build(tmp_path, trainer):
    cfg = compose_cli(tmp_path, f"trainer={trainer}")
    built = instantiate(cfg.trainer, logger=False, callbacks=build_callbacks(cfg))
    assert built.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainers_compose(tmp_path, trainer):
    cfg = compose_cli(tmp_path, f"trainer={trainer}")
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.use_distributed_sampler is False


def test_wandb_logger_carries_group_tags_and_job_type(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cli(tmp_path, "logger=wandb", "loss=en", "labels=dominant", "group=sweep42", "tags=[mine]")
    loggers = {name: instantiate(node) for name, node in cfg.logger.items()}
    assert set(loggers) == {"csv", "wandb"}
    init = loggers["wandb"]._wandb_init
    assert init["group"] == "sweep42"
    assert init["job_type"] == "en"
    assert init["tags"] == ["synthetic", "dominant", "en", "resnet18", "mine"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("csv", {"csv"}),
        ("tensorboard", {"csv", "tensorboard"}),
        ("wandb", {"csv", "wandb"}),
        ("[wandb,tensorboard]", {"csv", "wandb", "tensorboard"}),
        ("[csv,tensorboard]", {"csv", "tensorboard"}),
    ],
)
def test_every_logger_choice_keeps_the_csv_log(tmp_path, monkeypatch, choice, expected):
    """The report's curves and label_quality.png are read from csv/metrics.csv."""
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cli(tmp_path, f"logger={choice}")
    assert set(cfg.logger) == expected
    loggers = build_loggers(cfg)
    assert len(loggers) == len(expected)
    assert sum(isinstance(lg, CSVLogger) for lg in loggers) == 1


def test_wandb_job_type_of_an_ablation_variant_is_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cli(tmp_path, "logger=wandb", "experiment=adagc_ablation", "ablation=adagc_no_mixup")
    init = instantiate(cfg.logger.wandb)._wandb_init
    assert init["job_type"] == "adagc_no_mixup"
    assert "adagc" in init["tags"] and "adagc_no_mixup" in init["tags"]


def test_wandb_job_type_names_a_head_other_than_the_linear_one(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cli(tmp_path, "logger=wandb", "loss=en", "head=q2l")
    init = instantiate(cfg.logger.wandb)._wandb_init
    assert init["job_type"] == "en+q2l" and "en+q2l" in init["tags"]


def test_unknown_override_key_is_a_clear_error(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="optim.lrr"):
        compose_cli(tmp_path, "optim.lrr=0.1")


def test_learning_rate_monitor_only_with_a_logger(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor

    def monitors(*overrides):
        return [c for c in build_callbacks(compose_cli(tmp_path, *overrides)) if isinstance(c, LearningRateMonitor)]

    assert len(monitors()) == 1, "the default CSV logger receives the learning rates"
    assert monitors("~logger") == [], "without a logger Lightning's monitor would stop the run"
