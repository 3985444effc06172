"""Structured configs: wrong types and unknown keys fail while composing, impossible values before anything runs."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import OmegaConf

from splml.config import config_dir, register_resolvers
from splml.config_checks import check_run_config
from splml.data.datamodules.schema import DATAMODULE_SCHEMAS, SplitDataModuleConfig
from splml.schema import ConfigValueError, OptimConfig, TrainerConfig, validate_config


def composed(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=fast", "optim.lr"),
        ("dataset.datamodule.batch_size=zero", "dataset.datamodule.batch_size"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs"),
        ("dataset.datamodule.augment.hflip=maybe", "dataset.datamodule.augment.hflip"),
        ("trainer.max_epoch=3", "trainer.max_epoch"),  # a typo of a Lightning argument
    ],
)
def test_a_wrong_type_or_an_unknown_key_fails_while_composing_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as error:
        composed(override)
    assert key in f"{error.value} {error.value.__cause__}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "dataset.datamodule.batch_size=0",
            "dataset.datamodule.batch_size=0: the batch size per process must be an integer >= 1",
        ),
        ("optim.lr=-0.1", "optim.lr=-0.1: the backbone's learning rate must be >= 0"),
        ("optim.threshold=1", "optim.threshold=1.0: the F1 decision threshold on probabilities must be > 0 and < 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: the number of training epochs must be an integer >= 1"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: the number of training epochs must be an integer >= 1"),
        ("dataset.datamodule.max_samples.train=0", "dataset.datamodule.max_samples.train=0: must be an integer >= 1"),
        ("trainer.precision=17", "trainer.precision=17: must be one of"),
        ("dataset.datamodule.upsampling=cubic", "dataset.datamodule.upsampling=cubic: must be one of"),
        ("dataset=aid dataset.datamodule.val_fraction=1.5", "dataset.datamodule.val_fraction=1.5: must be >= 0"),
    ],
)
def test_an_impossible_value_is_refused_naming_the_key(override, message):
    cfg = composed(*override.split())
    with pytest.raises(ConfigValueError) as error:
        check_run_config(cfg)
    assert str(error.value).startswith(message)


def test_the_default_configs_of_every_dataset_and_trainer_are_valid_and_typed():
    datasets = ("synthetic", "ben", "aid", "mlaid", "coco", "voc", "nuswide", "cub", "dlrsd", "whdld")
    trainers = ("cpu", "gpu", "ddp", "ddp_cpu")
    for dataset, trainer in [(d, "cpu") for d in datasets] + [("synthetic", t) for t in trainers]:
        cfg = composed(f"dataset={dataset}", f"trainer={trainer}")
        validate_config(cfg)
        assert OmegaConf.get_type(cfg.trainer) is TrainerConfig
        assert issubclass(OmegaConf.get_type(cfg.dataset.datamodule), SplitDataModuleConfig)
    assert OmegaConf.get_type(composed().optim) is OptimConfig


def test_the_schema_types_the_values_it_reads():
    cfg = composed("optim.lr=1e-2", "dataset.datamodule.image_size=64")
    assert cfg.optim.lr == 0.01 and cfg.dataset.datamodule.image_size == 64
    assert isinstance(cfg.optim.lr, float)


def test_the_trainer_schema_is_lightnings_trainer():
    """Every argument of lightning.Trainer (but the callbacks and loggers the run builds), with its default."""
    import lightning

    parameters = inspect.signature(lightning.Trainer.__init__).parameters
    expected = {n: p.default for n, p in parameters.items() if n not in ("self", "callbacks", "logger")}
    fields = {f.name: f.default for f in dataclasses.fields(TrainerConfig) if f.name != "_target_"}
    assert fields == expected


def _constructor_defaults(cls: type) -> dict:
    """The keyword options of ``cls`` and of the classes it passes ``**kwargs`` on to, with their defaults."""
    options: dict = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass.__module__.startswith(("lightning", "builtins", "abc")):
            continue
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name in ("self", "labels") or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            options.setdefault(name, parameter.default)
    return options


@pytest.mark.parametrize("name", sorted(DATAMODULE_SCHEMAS))
def test_every_datamodule_schema_mirrors_its_constructor(name):
    schema = DATAMODULE_SCHEMAS[name]
    cls = get_class(schema._target_)
    options = _constructor_defaults(cls)
    fields = {f.name for f in dataclasses.fields(schema) if f.name != "_target_"}
    # AID fixes its class names and folders itself, the synthetic dataset its root: the schemas do not offer them.
    fixed = {"aid": {"class_names", "images_dir", "split_dirs", "test_fraction"}, "synthetic": {"root"}}
    fixed = fixed.get(name, set())
    assert fields == set(options) - fixed, f"{name}: schema {sorted(fields)} vs constructor {sorted(options)}"
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    for field in fields:
        constructor = options[field]
        if constructor is inspect.Parameter.empty or field in ("augment", "max_samples", "value_range", "synthetic"):
            continue  # required, or a node whose parts the constructor takes as a dict
        assert defaults[field] == (list(constructor) if isinstance(constructor, tuple) else constructor), field


def test_a_bad_value_on_the_command_line_fails_at_once_without_loading_lightning(tmp_path):
    script = (
        f"import sys; sys.argv = ['splml-train', 'dataset.datamodule.batch_size=0', 'hydra.run.dir={tmp_path}']\n"
        "import splml.train as t\n"
        "try:\n    t.main()\nexcept BaseException as e:\n    print(type(e).__name__, 'lightning' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "dataset.datamodule.batch_size=0: the batch size per process must be an integer >= 1" in proc.stderr
    assert proc.stdout.split() == ["SystemExit", "False"]  # failed, and before Lightning was imported
    assert not (tmp_path / "results.json").exists()
