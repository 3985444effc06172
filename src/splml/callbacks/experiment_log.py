"""What a run sends to its experiment loggers besides metrics: its config and its figures.

* :class:`LogRunConfig` gives every logger the run's resolved config as hyperparameters when
  training starts: the W&B run config (nested, as in ``.hydra/config.yaml``), ``hparams.yaml`` in
  the CSV folder, and TensorBoard's HParams table (and ``hparams.yaml`` in its folder) through
  ``TensorBoardLogger.log_hyperparams``, flattened to ``optim/lr`` style keys, since TensorBoard
  takes only scalars, with the task's scores as the table's metric columns.
* The figures a run writes reach the loggers through :func:`splml.loggers.log_figure`.
* :class:`RecordLoggerRuns` keeps the W&B run id in every checkpoint, so a resumed run continues
  the same W&B run (:class:`splml.loggers.ResumableWandbLogger`).

The learning rates come from Lightning's ``LearningRateMonitor`` (``conf/callbacks/default.yaml``),
one curve per optimizer parameter group, named after the group (``backbone``, ``head``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from splml.io.checkpoint import write_logger_runs

log = logging.getLogger(__name__)

Scalar = bool | int | float | str

#: Scores TensorBoard's HParams table shows next to the config when the run names none (see
#: :func:`hparams_table_metrics`); the table reads each run's latest value of these tags.
HPARAMS_TABLE_METRICS = ("val/mAP_macro", "test/mAP_macro")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested config -> ``{"optim/lr": 0.001, ...}`` with scalar values only.

    Lists, ``None`` and empty sections become their JSON text, so no key is left out (Lightning's
    own flattening drops empty lists and sections, such as the default ``tags: []``).
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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # When training starts: a resumed run's step is restored by then (not yet at on_fit_start).
        config = getattr(pl_module, "run_config", None)
        if config is None:
            log.warning("the module carries no run config (not built by splml.train): no hyperparameters logged")
            return
        # TensorBoard's HParams table needs its metric columns named now; Lightning logs each at the step
        # given with the value given, NaN here: no score yet, and the table shows the run's latest value.
        # The step is the run's: 0, or a resumed run's first, after the history it carries over (an
        # earlier step would make TensorBoard drop the carried-over points of those tags).
        columns = dict.fromkeys(hparams_table_metrics(trainer, pl_module), math.nan)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(flatten_config(config), metrics=columns, step=trainer.global_step)
                if trainer.is_global_zero:
                    # Lightning writes hparams.yaml once, when fitting starts (before this hook, which waits for
                    # a resumed run's step) and never over an existing file: write it again with the config.
                    Path(logger.log_dir, logger.NAME_HPARAMS_FILE).unlink(missing_ok=True)
                    logger.save()
            else:
                logger.log_hyperparams(config)


class RecordLoggerRuns(L.Callback):
    """Writes the experiment loggers' run ids into every checkpoint (``{"wandb": <run id>}``)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger) and lg.version), None)
        write_logger_runs(checkpoint, {"wandb": str(wandb.version)} if wandb is not None else {})


def hparams_table_metrics(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str, ...]:
    """The task's scores: the metric the best checkpoint is chosen on, then the module's ``summary_metrics``.

    Classification: ``val/mAP_macro``, ``test/mAP_macro``, ...; retrieval: ``val/mAP@100``,
    ``test/mAP@100``, ... (:data:`HPARAMS_TABLE_METRICS` when neither is known).
    """
    monitors = [cb.monitor for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
    metrics = [*monitors[:1], *getattr(pl_module, "summary_metrics", ())]
    return tuple(dict.fromkeys(metrics)) or HPARAMS_TABLE_METRICS
