"""Turn a composed Hydra config into the objects of a run (shared by train and eval)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splml.data.datamodule import ReBENDataModule
from splml.models.model import SPMLModel
from splml.module import SPMLModule
from splml.utils.naming import method_name

log = logging.getLogger(__name__)

#: The config groups whose choice identifies a run (recorded in results.json and logger tags).
CHOICE_GROUPS = ("dataset", "labels", "loss", "backbone", "head", "trainer", "logger", "experiment", "ablation")


def project_root() -> Path:
    """The repository root (parent of ``conf/``), found from this file's location."""
    return Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """Where Hydra's config tree lives; ``SPLML_CONFIG_DIR`` overrides for installed copies."""
    import os

    return Path(os.environ.get("SPLML_CONFIG_DIR", project_root() / "conf")).resolve()


def register_resolvers() -> None:
    """OmegaConf resolvers used by the config tree (idempotent)."""
    if not OmegaConf.has_resolver("splml_root"):
        OmegaConf.register_new_resolver("splml_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("splml_tags"):
        OmegaConf.register_new_resolver("splml_tags", _flatten_tags)
    if not OmegaConf.has_resolver("splml_method"):
        OmegaConf.register_new_resolver("splml_method", method_name)
    if not OmegaConf.has_resolver("splml_mkdir"):
        OmegaConf.register_new_resolver("splml_mkdir", _mkdir)
    if not OmegaConf.has_resolver("splml_job_dir"):
        from splml.runs import job_dir_name

        OmegaConf.register_new_resolver("splml_job_dir", job_dir_name)


def _mkdir(path: str) -> str:
    """Create ``path`` (for files whose writers do not create folders, like SQLite) and return it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return str(path)


def _flatten_tags(*parts: Any) -> list[str]:
    """Logger tags from group choices and the user's ``tags`` list, without empties or repeats."""
    out: list[str] = []
    for part in parts:
        items = list(part) if isinstance(part, (list, tuple)) or OmegaConf.is_list(part) else [part]
        for item in items:
            if item not in (None, "") and str(item) not in out:
                out.append(str(item))
    return out


def build_datamodule(cfg: DictConfig) -> ReBENDataModule:
    labels = instantiate(cfg.labels)
    return instantiate(cfg.dataset.datamodule, labels=labels, _convert_="all")


def build_model(cfg: DictConfig, datamodule: ReBENDataModule) -> SPMLModel:
    backbone = instantiate(cfg.backbone, in_chans=datamodule.num_channels)
    num_features = getattr(backbone, "num_features", None)
    if num_features is None:
        raise ValueError(f"backbone {cfg.backbone} does not expose num_features")
    head = instantiate(cfg.head, in_features=int(num_features), num_classes=datamodule.num_classes)
    return SPMLModel(backbone, head)


def build_module(cfg: DictConfig, datamodule: ReBENDataModule) -> SPMLModule:
    model = build_model(cfg, datamodule)
    loss = instantiate(cfg.loss)
    return SPMLModule(
        model=model,
        loss=loss,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        **OmegaConf.to_container(cfg.optim, resolve=True),  # type: ignore[arg-type]
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            log.debug("callback %s: %s", name, node._target_)
            callbacks.append(instantiate(node))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            log.debug("logger %s: %s", name, node._target_)
            loggers.append(instantiate(node))
    return loggers
