"""Turn a composed Hydra config into the objects of a run (shared by train, eval and the loading of checkpoints)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from splml.config import CHOICE_GROUPS, config_dir, project_root, register_resolvers  # noqa: F401 - re-exported
from splml.data.datamodules.base import SplitDataModule
from splml.io.checkpoint import DataSpec
from splml.methods.base import SPMLLoss
from splml.methods.registry import loss_names
from splml.models.backbone import feature_width
from splml.models.acceleration import prepare_network
from splml.models.model import SPMLModel
from splml.models.projection import RetrievalModel

log = logging.getLogger(__name__)

#: The task of a config without a ``task`` node (checkpoints written before tasks existed).
DEFAULT_TASK = {"name": "classification", "module": {"_target_": "splml.module.SPMLModule"}}


def task_config(cfg: DictConfig) -> DictConfig:
    """The run's ``task`` node (classification for configs that predate the group)."""
    task = cfg.get("task")
    return task if task is not None else OmegaConf.create(DEFAULT_TASK)


def build_datamodule(cfg: DictConfig) -> SplitDataModule:
    labels = instantiate(cfg.labels)
    datamodule = instantiate(cfg.dataset.datamodule, labels=labels, _convert_="all")
    views = task_config(cfg).get("train_views", 1)
    if views != 1:
        datamodule.set_train_views(views)
    return datamodule


def build_data_spec(cfg: DictConfig, datamodule: Any) -> DataSpec:
    """What the trained network takes and gives (:class:`~splml.io.checkpoint.DataSpec`), from the
    datamodule's ``input_spec()`` and the run's task, backbone and head; recorded in every checkpoint."""
    describe = getattr(datamodule, "input_spec", None)
    if describe is None:
        raise TypeError(
            f"{type(datamodule).__name__} does not describe its input (input_spec(): classes, bands, normalisation, "
            "image size); every datamodule must, so that its checkpoints can be used without the data"
        )
    task = task_config(cfg)
    head = task.projection if task.name == "retrieval" else cfg.head
    return DataSpec(
        task=str(task.name), backbone=str(cfg.backbone.get("name", cfg.backbone.get("_target_"))),
        head=str(head.get("_target_", "?")).rsplit(".", 1)[-1], **describe(),
    )  # fmt: skip


def without_initial_weights(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the backbone built from scratch: the weights about to be loaded replace any start weights.

    A checkpoint's config may name the file its backbone started from (``backbone.weights_path``),
    which need not exist where the checkpoint is used.
    """
    cfg = cfg.copy()
    with open_dict(cfg.backbone):
        cfg.backbone.pretrained = False
        cfg.backbone.weights_path = None
    return cfg


def build_backbone(cfg: DictConfig, data: Any) -> tuple[Any, int]:
    """The backbone for the data's channels and image size, and its feature width.

    ``data`` is a datamodule or a :class:`~splml.io.checkpoint.DataSpec` (``num_channels``,
    ``num_classes``, ``class_names``, ``image_size``): a model is built the same way from either.
    """
    backbone = instantiate(cfg.backbone, in_chans=data.num_channels, image_size=getattr(data, "image_size", None))
    return backbone, feature_width(backbone)


def build_model(cfg: DictConfig, data: Any) -> SPMLModel:
    backbone, num_features = build_backbone(cfg, data)
    head = instantiate(cfg.head, in_features=num_features, num_classes=data.num_classes)
    return SPMLModel(backbone, head)


def build_retrieval_model(cfg: DictConfig, data: Any) -> RetrievalModel:
    backbone, num_features = build_backbone(cfg, data)
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


def _build_classification(cfg: DictConfig, data: Any, loss: SPMLLoss) -> L.LightningModule:
    return instantiate(
        task_config(cfg).module, model=build_model(cfg, data), loss=loss, num_classes=data.num_classes,
        class_names=list(data.class_names), threshold=cfg.optim.threshold, **optim_arguments(cfg),
        _convert_="all",
    )  # fmt: skip


def _build_retrieval(cfg: DictConfig, data: Any, loss: SPMLLoss) -> L.LightningModule:
    # optim.threshold, the decision threshold of classification F1, is not passed: retrieval only ranks.
    # Without a datamodule (a model rebuilt from its checkpoint) there is no database to evaluate against.
    return instantiate(
        task_config(cfg).module, model=build_retrieval_model(cfg, data), loss=loss,
        database=getattr(data, "database_dataloader", None), num_classes=data.num_classes,
        class_names=list(data.class_names), **optim_arguments(cfg), _convert_="all",
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


def build_module(cfg: DictConfig, data: Any) -> L.LightningModule:
    """The LightningModule of the run's task (``task.name``), with the model and loss of the config.

    ``data`` is the run's datamodule, or the :class:`~splml.io.checkpoint.DataSpec` of a checkpoint.
    """
    task = str(task_config(cfg).name)
    if task not in TASK_BUILDERS:
        raise ValueError(f"task.name={task!r} is not a task; known: {sorted(TASK_BUILDERS)}")
    loss = instantiate(cfg.loss)
    check_loss_fits_task(loss, task)
    module = TASK_BUILDERS[task](cfg, data, loss)
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
