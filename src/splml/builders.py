"""Turn a composed Hydra config into the objects of a run (shared by train and eval)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splml.data.datamodules.reben import ReBENDataModule
from splml.methods.base import SPMLLoss
from splml.methods.registry import loss_names
from splml.models.acceleration import prepare_network
from splml.models.model import SPMLModel
from splml.models.projection import RetrievalModel
from splml.module import SPMLTrainingModule
from splml.utils.naming import method_name

log = logging.getLogger(__name__)

#: The config groups whose choice identifies a run (recorded in results.json and logger tags).
CHOICE_GROUPS = ("task", "dataset", "labels", "loss", "backbone", "head", "trainer", "logger", "experiment", "ablation")

#: The task of a config without a ``task`` node (checkpoints written before tasks existed).
DEFAULT_TASK = {"name": "classification", "module": {"_target_": "splml.module.SPMLModule"}}


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


def task_config(cfg: DictConfig) -> DictConfig:
    """The run's ``task`` node (classification for configs that predate the group)."""
    task = cfg.get("task")
    return task if task is not None else OmegaConf.create(DEFAULT_TASK)


def build_datamodule(cfg: DictConfig) -> ReBENDataModule:
    labels = instantiate(cfg.labels)
    datamodule = instantiate(cfg.dataset.datamodule, labels=labels, _convert_="all")
    views = task_config(cfg).get("train_views", 1)
    if views != 1:
        datamodule.set_train_views(views)
    return datamodule


def build_backbone(cfg: DictConfig, datamodule: ReBENDataModule) -> tuple[Any, int]:
    """The backbone for the data's channels, and its feature width."""
    backbone = instantiate(cfg.backbone, in_chans=datamodule.num_channels)
    num_features = getattr(backbone, "num_features", None)
    if num_features is None:
        raise ValueError(f"backbone {cfg.backbone} does not expose num_features")
    return backbone, int(num_features)


def build_model(cfg: DictConfig, datamodule: ReBENDataModule) -> SPMLModel:
    backbone, num_features = build_backbone(cfg, datamodule)
    head = instantiate(cfg.head, in_features=num_features, num_classes=datamodule.num_classes)
    return SPMLModel(backbone, head)


def build_retrieval_model(cfg: DictConfig, datamodule: ReBENDataModule) -> RetrievalModel:
    backbone, num_features = build_backbone(cfg, datamodule)
    task = task_config(cfg)
    projection = instantiate(task.projection, in_features=num_features)
    return RetrievalModel(backbone, projection, embedding=task.embedding)


#: The optim.* keys the training module takes itself; the others reach it through the nodes.
_MODULE_OPTIM_KEYS = ("lr", "head_lr_mult", "linear_probe_epochs")


def optim_factory(cfg: DictConfig, kind: str) -> Any:
    """``optim.<kind>`` (``optimizer`` or ``scheduler``) built into its factory (:mod:`splml.optim`).

    The node is a ``_partial_`` node with a ``_target_``, or null (no scheduler). A plain name
    (``optim.optimizer=sgd``, as configs written before the ``optim/`` groups had) stands for
    the option ``conf/optim/<kind>/<name>.yaml``. Errors name the key.
    """
    key = f"optim.{kind}"
    node = cfg.optim.get(kind)
    if isinstance(node, str):
        node = _optim_option(cfg, kind, node)
    if node is None:
        return None
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise ValueError(
            f"{key} must be a node with a _target_ (a _partial_ node of an optimizer or scheduler class) or one "
            f"of the options {_optim_options(kind)} (conf/optim/{kind}/); got {node}"
        )
    try:
        return instantiate(node, _partial_=True)
    except InstantiationException as exc:
        raise ValueError(f"{key}._target_={node._target_!r} cannot be built: {exc}") from exc


def _optim_options(kind: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / "optim" / kind).glob("*.yaml"))


def _optim_option(cfg: DictConfig, kind: str, name: str) -> Any:
    """The node of option ``name`` of group ``optim/<kind>``, resolved against ``cfg``."""
    path = config_dir() / "optim" / kind / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"optim.{kind}={name!r} is not an option of conf/optim/{kind}/ ({', '.join(_optim_options(kind))}); "
            f"choose one with optim/{kind}=<option> or give a node with a _target_"
        )
    option = OmegaConf.load(path)
    # An option that sets the node to null is written for the global package (optim: {<kind>: null}).
    node = option.optim[kind] if "optim" in option else option
    if node is None:
        return None
    resolved = OmegaConf.merge(cfg, {"optim": {kind: None}})
    resolved.optim[kind] = node
    return resolved.optim[kind]


def optim_arguments(cfg: DictConfig) -> dict[str, Any]:
    """The training module's optimisation arguments: the two factories and the parameter-group settings."""
    return {
        "optimizer": optim_factory(cfg, "optimizer"),
        "scheduler": optim_factory(cfg, "scheduler"),
        **{key: cfg.optim[key] for key in _MODULE_OPTIM_KEYS},
    }


def _build_classification(cfg: DictConfig, datamodule: ReBENDataModule, loss: SPMLLoss) -> SPMLTrainingModule:
    return instantiate(
        task_config(cfg).module, model=build_model(cfg, datamodule), loss=loss, num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names), threshold=cfg.optim.threshold, **optim_arguments(cfg),
        _convert_="all",
    )  # fmt: skip


def _build_retrieval(cfg: DictConfig, datamodule: ReBENDataModule, loss: SPMLLoss) -> SPMLTrainingModule:
    # optim.threshold, the decision threshold of classification F1, is not passed: retrieval only ranks.
    return instantiate(
        task_config(cfg).module, model=build_retrieval_model(cfg, datamodule), loss=loss,
        database=datamodule.database_dataloader, num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names), **optim_arguments(cfg), _convert_="all",
    )  # fmt: skip


#: ``task.name`` -> how its LightningModule is built (model, loss, evaluation).
TASK_BUILDERS = {"classification": _build_classification, "retrieval": _build_retrieval}


def check_loss_fits_task(loss: SPMLLoss, task: str) -> None:
    """A classification loss reads logits, a contrastive one embeddings: refuse a mismatch by name."""
    if loss.task == task:
        return
    if loss.task == "retrieval":
        raise ValueError(
            f"loss={loss.name} is a contrastive retrieval loss and needs task=retrieval (this run has "
            f"task={task}); classification losses are an, full, en, ... (README, Methods)"
        )
    raise ValueError(
        f"loss={loss.name} is a {loss.task} loss, but task={task} trains with a contrastive loss: "
        f"loss={', '.join(loss_names('retrieval'))} (README, Retrieval)"
    )


def loss_config(name: str, *overrides: str) -> DictConfig:
    """A config holding only ``loss``, composed by Hydra as ``loss=<name>`` would be (the parts of a
    composition included), its interpolations unresolved.

    For tools and tests that build a loss outside a run (not from inside a Hydra app): merge the
    values its interpolations read (``dataset.expected_positives``, ...) and instantiate ``.loss``.
    ``overrides`` are Hydra overrides such as ``loss.gamma=0.5``.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+loss={name}", *overrides])


def build_module(cfg: DictConfig, datamodule: ReBENDataModule) -> SPMLTrainingModule:
    """The LightningModule of the run's task (``task.name``), with the model and loss of the config."""
    task = str(task_config(cfg).name)
    if task not in TASK_BUILDERS:
        raise ValueError(f"task.name={task!r} is not a task; known: {sorted(TASK_BUILDERS)}")
    loss = instantiate(cfg.loss)
    check_loss_fits_task(loss, task)
    module = TASK_BUILDERS[task](cfg, datamodule, loss)
    # How the network runs (channels-last, torch.compile): models/acceleration.py, the model node.
    model_options = cfg.get("model")
    prepare_network(module.model, OmegaConf.to_container(model_options) if model_options is not None else None)
    return module


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The ``callbacks`` group's callbacks; learning-rate monitors only when the run has a logger."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    has_logger = any(node is not None and "_target_" in node for node in (cfg.get("logger") or {}).values())
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            log.debug("callback %s: %s", name, node._target_)
            callback = instantiate(node)
            if isinstance(callback, LearningRateMonitor) and not has_logger:
                log.info("callbacks.%s left out: the run has no logger to receive learning rates", name)
                continue
            callbacks.append(callback)
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            log.debug("logger %s: %s", name, node._target_)
            loggers.append(instantiate(node))
    return loggers
