"""Loggers with the guarantees the suite needs on top of Lightning's, and what reads and feeds them.

A run resumed from a checkpoint (``ckpt_path``, into its own folder or a new one) keeps its whole
history in every logger:

* :class:`ResumableCSVLogger`: a resumed run's ``metrics.csv`` keeps the rows of the run it resumes;
* :class:`ResumableTensorBoardLogger`: its event files start with the events of the run it resumes;
* :class:`ResumableWandbLogger`: it continues the same W&B run (the id is kept in the checkpoint);
* :func:`log_figure`: a PNG the run wrote, sent to every logger that shows images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from splml.io.checkpoint import read_logger_run
from splml.io.run_folder import METRICS_FILE, load_checkpoint, read_metric_rows
from splml.runs import checkpoint_run_dirs

log = logging.getLogger(__name__)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run's ``metrics.csv`` starts with the rows of the run it resumes.

    ``resume_from`` is the checkpoint the run resumes from (``${ckpt_path}``). Its run's
    ``metrics.csv`` is found next to it (``<run>/checkpoints/last.ckpt`` -> ``<run>/csv/``, right
    even when that folder was moved) or in the run folder recorded in the checkpoint. The rows
    of every epoch up to the checkpoint's are copied in before anything new is logged, whether
    the run resumes into the same folder (where Lightning would delete the file) or into another
    one; rows of an epoch the interrupted run did not finish, and its test rows, are left out, as
    the resumed run logs them again. So the log of a resumed run equals the uninterrupted run's.
    """

    def __init__(self, *args: Any, resume_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        previous = self._rows_before_resume() if self.resume_from else []
        experiment = super().experiment
        if previous:
            experiment.metrics = previous + experiment.metrics
            experiment.save()  # the history is on disk before the first new row
        return experiment

    def _rows_before_resume(self) -> list[dict[str, Any]]:
        ckpt_path = Path(str(self.resume_from))
        ckpt = load_checkpoint(ckpt_path)
        last_epoch = ckpt.get("epoch")
        relative = Path(self.log_dir).resolve().relative_to(Path(self.save_dir).resolve())
        looked = [run / relative / METRICS_FILE for run in checkpoint_run_dirs(ckpt_path, ckpt)]
        found = next((p for p in looked if p.is_file()), None)
        if found is None:
            log.warning(
                "no metrics.csv of the run resumed from %s (looked at %s): this run's metrics.csv starts at the "
                "epoch after the checkpoint", ckpt_path, ", ".join(map(str, looked)),
            )  # fmt: skip
            return []
        last_step = ckpt.get("global_step")

        def before_checkpoint(row: dict[str, Any]) -> bool:
            if any(str(k).startswith("test/") for k in row):
                return False
            if isinstance(row.get("epoch"), int):
                return last_epoch is None or row["epoch"] <= last_epoch
            # Rows without an epoch (learning rates, logged per step): only the steps the checkpoint has done.
            return last_step is None or not isinstance(row.get("step"), int) or row["step"] < last_step

        rows = [row for row in read_metric_rows(found) if before_checkpoint(row)]
        log.info("metrics.csv continues the %d rows of %s up to epoch %s", len(rows), found, last_epoch)
        return rows


class ResumableTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, except that a run resumed into another folder shows its whole history.

    ``resume_from`` is the checkpoint the run resumes from (``${ckpt_path}``), ``run_dir`` this
    run's folder. The events of the run it resumes (its folder is found as for
    :class:`ResumableCSVLogger`) up to the checkpoint's step are copied into one event file of the
    new log folder before anything new is written, so the curves run from the first epoch; the
    HParams entry and the interrupted run's test are not copied (the resumed run writes its own). Resumed into the same folder, the
    old event files are already there and nothing is copied.
    """

    def __init__(self, *args: Any, resume_from: str | None = None, run_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from, self.run_dir = resume_from, run_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None and self.resume_from and self.run_dir:
            self._copy_history()
        return super().experiment

    def _copy_history(self) -> None:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        ckpt_path = Path(str(self.resume_from))
        ckpt = load_checkpoint(ckpt_path)
        here = Path(self.log_dir).resolve()
        relative = here.relative_to(Path(str(self.run_dir)).resolve())
        folders = [run / relative for run in checkpoint_run_dirs(ckpt_path, ckpt)]
        found = next((f for f in folders if f.is_dir() and any(f.glob("events.out.tfevents.*"))), None)
        if found is None or found.resolve() == here:
            if found is None:
                log.warning("no TensorBoard events of the run resumed from %s (looked in %s)", ckpt_path, folders)
            return
        last_step = ckpt.get("global_step")
        writer = EventFileWriter(str(here), filename_suffix=".resumed")
        copied = 0
        try:
            for events in sorted(found.glob("events.out.tfevents.*")):
                for event in LegacyEventFileLoader(str(events)).Load():  # the events as written
                    # The checkpoint was written after `global_step` steps, whose events are logged at steps
                    # below it; from that step on they came after the checkpoint (its test, the next epoch),
                    # and the resumed run logs them again.
                    if not event.HasField("summary") or (last_step is not None and event.step >= last_step):
                        continue
                    if any(v.metadata.plugin_data.plugin_name == "hparams" or v.tag.startswith("test/")
                           for v in event.summary.value):  # fmt: skip
                        continue
                    writer.add_event(event)
                    copied += 1
        finally:
            writer.close()
        log.info("TensorBoard: %d events of %s up to step %s copied into %s", copied, found, last_step, here)


class ResumableWandbLogger(WandbLogger):
    """Lightning's W&B logger, except that a run resumed from a checkpoint continues the W&B run that wrote it.

    ``resume_from`` is the checkpoint (``${ckpt_path}``); the run id it recorded
    (:class:`splml.callbacks.experiment_log.RecordLoggerRuns`) becomes this logger's ``id`` with
    ``resume="allow"``, whatever folder the run resumes into. A checkpoint without one (written
    before ids were recorded, or by a run without W&B) starts a new W&B run, with a warning.
    """

    def __init__(self, *args: Any, resume_from: str | None = None, **kwargs: Any) -> None:
        if resume_from and not kwargs.get("id") and not kwargs.get("version"):
            run_id = read_logger_run(load_checkpoint(Path(str(resume_from))), "wandb")
            if run_id:
                kwargs.update(id=run_id, resume="allow")
                log.info("W&B: continuing run %s of the checkpoint %s", run_id, resume_from)
            else:
                log.warning("%s records no W&B run: this resumed run starts a new one", resume_from)
        super().__init__(*args, **kwargs)


def log_figure(trainer: L.Trainer, key: str, png: str | Path) -> None:
    """Send the PNG ``png`` to every logger that shows images (W&B, TensorBoard) under ``key``.

    The CSV log holds no images; the PNG itself stays in the run folder. Call on rank 0 only.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(png)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, _read_rgb(png), global_step=trainer.global_step, dataformats="HWC")


def _read_rgb(png: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))
