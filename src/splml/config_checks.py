"""Config values that cannot work, refused before any data is generated, read or trained on.

Without these checks ``trainer.max_epochs=0`` trains nothing and then fails for want of a best
checkpoint, a non-positive K makes the expected-positive losses optimise towards nonsense, and
``image_size=0`` fails deep inside the reader; each only after the dataset was built; and a
classifier head given to ``task=retrieval`` (which has none) would be ignored without a word. Every
error names the config key, the bad value and what is allowed, as ``key=value: ...``.
"""

from __future__ import annotations

import numbers
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from splml.schema import validate_config


def check_run_config(cfg: DictConfig, *, training: bool = True) -> None:
    """Raise ValueError naming the first config value that cannot work.

    First the constraints of the structured configs (:func:`splml.schema.validate_config`: trainer,
    optim, datamodule), then what depends on several keys. ``training=False`` (evaluation) checks
    only what evaluation uses: the data settings.
    """
    validate_config(cfg, only=None if training else ("dataset",))
    dataset = cfg.get("dataset") or {}
    datamodule = dataset.get("datamodule") or {}
    if "image_size" in datamodule:
        _require_positive_int(
            "dataset.datamodule.image_size", datamodule.image_size, "the network input side in pixels"
        )
    if not training:
        return
    _check_head_fits_task(cfg)
    trainer = cfg.get("trainer") or {}
    if "max_epochs" in trainer:
        _require_positive_int("trainer.max_epochs", trainer.max_epochs, "the number of training epochs")
    for path, node in _loss_nodes(cfg.get("loss"), "loss"):
        if "expected_positives" in node:
            _check_expected_positives(cfg, node, path)


def _check_head_fits_task(cfg: DictConfig) -> None:
    """``task=retrieval`` has no classifier head (``head=none``); classification needs one.

    Only at training: checkpoints of retrieval runs written before ``head=none`` existed carry the
    (unused) linear head in their config and still evaluate.
    """
    task = cfg.get("task")
    task_name = str(task.get("name", "classification")) if task is not None else "classification"
    head = cfg.get("head")
    if task_name == "retrieval" and head is not None:
        choice = _group_choice(cfg, "head") or f"<{head.get('_target_', 'a head node')}>"
        raise ValueError(
            f"head={choice}: task=retrieval has no classifier head (its projection, task.projection, reads the "
            f"pooled backbone features), so head={choice} would be ignored; leave head out (task=retrieval "
            "selects head=none)"
        )
    if task_name != "retrieval" and head is None:
        raise ValueError(f"head=none: task={task_name} needs a classifier head; choose head=linear, boostlu or q2l")


def _group_choice(cfg: DictConfig, group: str) -> str | None:
    """Hydra's choice of ``group`` when running under Hydra (None otherwise)."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return None


def _loss_nodes(node: Any, path: str) -> list[tuple[str, DictConfig]]:
    """The loss node and the parts it composes (``loss.base``, ``loss.term``), with their key paths."""
    if not isinstance(node, DictConfig):
        return []
    found = [(path, node)]
    for key in ("base", "term"):
        found += _loss_nodes(node.get(key), f"{path}.{key}")
    return found


def _require_positive_int(key: str, value: Any, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{key}={value}: {meaning} must be an integer >= 1")


def _check_expected_positives(cfg: DictConfig, node: DictConfig, path: str) -> None:
    """K, the expected number of positive labels per image: in (0, number of classes]."""
    value = node.expected_positives
    # Name the key the user sets: the dataset's K unless the loss was given its own value.
    raw = OmegaConf.to_container(node, resolve=False)["expected_positives"]  # type: ignore[index]
    key = "dataset.expected_positives" if raw == "${dataset.expected_positives}" else f"{path}.expected_positives"
    used_by = f"loss={_loss_choice(cfg)} uses it as K, the expected number of positive labels per image"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{key}={value}: {used_by}; it must be a number > 0 (e.g. 2.9 for reBEN)")
    num_classes = cfg.dataset.get("num_classes")
    if num_classes is not None and value > num_classes:
        raise ValueError(
            f"{key}={value}: {used_by}; it must be at most the dataset's {num_classes} classes (dataset.num_classes)"
        )


def _loss_choice(cfg: DictConfig) -> str:
    """The loss option's name: Hydra's choice when running under Hydra, else the loss class's ``name``."""
    return _group_choice(cfg, "loss") or _loss_name(cfg.loss)


def _loss_name(node: DictConfig) -> str:
    """What the loss of ``node`` calls itself (a composition: ``<base>_<term>``)."""
    if node.get("name"):
        return str(node.name)
    if "base" in node and "term" in node:
        return f"{_loss_name(node.base)}_{_loss_name(node.term)}"
    cls = get_class(node._target_)
    return str(getattr(cls, "name", cls.__name__))
