"""Structured configs: the types and the allowed values of ``trainer``, ``optim`` and ``dataset.datamodule``.

Each node's schema is a dataclass registered in Hydra's ConfigStore under ``schema/`` and named
first in the defaults list of the YAML that fills it (``conf/trainer/*.yaml``,
``conf/train.yaml``, ``conf/dataset/*.yaml``). Hydra then refuses, while composing, a key the
schema does not have (``trainer.max_epoch=3``) or a value of the wrong type (``optim.lr=fast``),
naming the key. Values of the right type that cannot work (``batch_size=0``, a negative learning
rate) are described by a constraint on the field (:func:`at_least`, :func:`one_of`, ...) and
refused by :func:`validate_config`, which every command runs on the composed config before it
builds anything. Light on purpose: imported before Hydra parses the command line.

A new datamodule extends the schema of its family (:mod:`splml.data.datamodules.schema`); the
trainer schema mirrors ``lightning.Trainer``'s arguments and their defaults (a test compares
them), so any Trainer argument can be set as ``trainer.<name>=``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from splml.data.datamodules.schema import DATAMODULE_SCHEMAS
from splml.utils.constraints import at_least, greater_than, one_of, optional_at_least

#: ConfigStore group of the schemas (``- /schema/trainer@_here_`` in a defaults list).
SCHEMA_GROUP = "schema"


class ConfigValueError(ValueError):
    """A config value of the right type that cannot work; the message starts with ``key=value:``."""


@dataclass
class TrainerConfig:
    """``lightning.Trainer``'s arguments (except ``callbacks`` and ``logger``, which the run builds), with its defaults."""

    _target_: str = "lightning.Trainer"
    accelerator: Any = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = at_least(1, default=1)
    precision: Any = one_of(
        None, 64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
        "64-true", "transformer-engine", "transformer-engine-float16", default=None,
    )  # fmt: skip
    fast_dev_run: Any = False
    # Finite: the learning-rate schedule is laid out over the run (Lightning's -1, no limit, cannot be).
    max_epochs: int | None = optional_at_least(1, default=None, meaning="the number of training epochs")
    min_epochs: int | None = optional_at_least(0, default=None)
    max_steps: int = at_least(-1, default=-1)
    min_steps: int | None = optional_at_least(0, default=None)
    max_time: Any = None
    limit_train_batches: Any = optional_at_least(0, default=None)
    limit_val_batches: Any = optional_at_least(0, default=None)
    limit_test_batches: Any = optional_at_least(0, default=None)
    limit_predict_batches: Any = optional_at_least(0, default=None)
    overfit_batches: Any = at_least(0, default=0.0)
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = optional_at_least(1, default=1)
    num_sanity_val_steps: int | None = optional_at_least(-1, default=None)
    log_every_n_steps: int | None = optional_at_least(1, default=None)
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = at_least(1, default=1)
    gradient_clip_val: float | None = optional_at_least(0, default=None)
    gradient_clip_algorithm: str | None = one_of(None, "norm", "value", default=None)
    deterministic: Any = one_of(None, True, False, "warn", default=None)
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = at_least(0, default=0)
    default_root_dir: str | None = None
    enable_autolog_hparams: bool = True
    model_registry: str | None = None


@dataclass
class OptimConfig:
    """``optim``: the optimisation settings the optimizer and scheduler nodes are built from (README, Config groups)."""

    # The optim/optimizer and optim/scheduler groups fill these (_partial_ nodes), or a plain
    # option name as configs written before those groups had (optim.optimizer=sgd).
    optimizer: Any = None
    scheduler: Any = None
    # 0 is allowed: it evaluates the untrained network (the retrieval benchmark's reference row).
    lr: float = at_least(0, default=1.0e-3, meaning="the backbone's learning rate")
    weight_decay: float = at_least(0, default=1.0e-4)
    head_lr_mult: float = at_least(0, default=1.0, meaning="the head's learning rate over the backbone's")
    warmup_epochs: int = at_least(0, default=0)
    threshold: float = greater_than(0, default=0.5, below=1, meaning="the F1 decision threshold on probabilities")
    linear_probe_epochs: int = at_least(0, default=0)
    linear_probe_lr: float | None = optional_at_least(0, default=None, strict=True)


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; the configs name them in their defaults lists)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group=SCHEMA_GROUP, name="trainer", node=TrainerConfig)
    store.store(group=SCHEMA_GROUP, name="optim", node=OptimConfig)
    for name, schema in DATAMODULE_SCHEMAS.items():
        store.store(group=f"{SCHEMA_GROUP}/datamodule", name=name, node=schema)


def validate_config(cfg: DictConfig, *, only: tuple[str, ...] | None = None) -> None:
    """Raise :class:`ConfigValueError` naming the first value a schema's constraints refuse (``key=value: why``).

    Every node built from a schema is checked, wherever it sits (``trainer``, ``optim``,
    ``dataset.datamodule`` and its ``augment``, ``max_samples``, ... parts), or only those below
    the keys ``only`` names (``("dataset",)``).
    """
    for path, node, schema in _typed_nodes(cfg, ""):
        if only is not None and not any(path == key or path.startswith(f"{key}.") for key in only):
            continue
        for spec in dataclasses.fields(schema):
            constraint = spec.metadata.get("constraint")
            if constraint is None or spec.name not in node:
                continue
            value = node[spec.name]
            # Annotations are strings here (postponed evaluation): an int field's values are whole numbers.
            problem = constraint.problem(value, integer=str(spec.type) in ("int", "int | None", "Optional[int]"))
            if problem:
                key = f"{path}.{spec.name}" if path else spec.name
                raise ConfigValueError(f"{key}={_shown(value)}: {problem}")


def _typed_nodes(node: Any, path: str) -> Iterator[tuple[str, DictConfig, type]]:
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if schema is not None and dataclasses.is_dataclass(schema):
        yield path, node, schema
    for key in node:
        if key == "hydra":
            continue
        child = node._get_node(key)  # the node itself, without resolving interpolations
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _typed_nodes(child, f"{path}.{key}" if path else str(key))


def _shown(value: Any) -> str:
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
