"""What a run sends to its experiment loggers besides metrics: its config and its figures.

* :class:`LogRunConfig` gives every logger the run's resolved config as hyperparameters when
  fitting starts: the W&B run config (nested, as in ``.hydra/config.yaml``), ``hparams.yaml`` in
  the CSV and TensorBoard folders, and TensorBoard's HParams table (flattened to ``optim/lr``
  style keys, since TensorBoard takes only scalars).
* The figures a run writes reach the loggers through :func:`splml.loggers.log_figure`.

The learning rates come from Lightning's ``LearningRateMonitor`` (``conf/callbacks/default.yaml``),
one curve per optimizer parameter group, named after the group (``backbone``, ``head``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

#: Scores TensorBoard's HParams table shows next to the config when the run names none (see
#: :func:`hparams_table_metrics`); the table reads each run's latest value of these tags.
HPARAMS_TABLE_METRICS = ("val/mAP_macro", "test/mAP_macro")

Scalar = bool | int | float | str


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested config -> ``{"optim/lr": 0.001, ...}`` with scalar values only.

    Lists, ``None`` and empty sections become their JSON text, so no key is left out.
    """
    flat: dict[str, Scalar] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class LogRunConfig(L.Callback):
    """Logs the resolved run config (``pl_module.run_config``, set by ``splml.train``) to every logger."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config = getattr(pl_module, "run_config", None)
        if config is None:
            log.warning("the module carries no run config (not built by splml.train): no hyperparameters logged")
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                _write_tensorboard_hparams(logger, flatten_config(config), hparams_table_metrics(trainer, pl_module))


def hparams_table_metrics(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str, ...]:
    """The task's scores: the metric the best checkpoint is chosen on, then the module's ``summary_metrics``.

    Classification: ``val/mAP_macro``, ``test/mAP_macro``, ...; retrieval: ``val/mAP@100``,
    ``test/mAP@100``, ... (:data:`HPARAMS_TABLE_METRICS` when neither is known).
    """
    monitors = [cb.monitor for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
    metrics = [*monitors[:1], *getattr(pl_module, "summary_metrics", ())]
    return tuple(dict.fromkeys(metrics)) or HPARAMS_TABLE_METRICS


def _write_tensorboard_hparams(logger: TensorBoardLogger, flat: dict[str, Scalar], metrics: tuple[str, ...]) -> None:
    """The HParams table entry of this run, with the real score tags as its metric columns.

    Lightning's ``log_hyperparams(params, metrics)`` would also write a placeholder value of each
    metric at step 0, which would then appear in its curve; the summaries alone only name the tags.
    """
    from torch.utils.tensorboard.summary import hparams

    summaries = hparams(flat, dict.fromkeys(metrics, 0.0))
    writer = logger.experiment._get_file_writer()  # the same event file as the run's scalars
    for summary in summaries:
        writer.add_summary(summary)
