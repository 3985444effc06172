"""Snapshots of the training state at epoch boundaries, and the rollback to one of them (AdaGC).

AIO2 (AdaGC's first author's earlier method; ``specs/methods.md``, AdaGC, item 4) saves a
checkpoint after every epoch of its warm-up and, once the trigger has fired, reloads the student,
the teacher and the optimizer of the checkpoint nearest the trigger epoch and trains on with
corrected labels. Here the state rolled back is everything that decides the rest of the run:

* the LightningModule's weights (the student) and buffers,
* every optimizer and learning-rate scheduler (so the schedule resumes where it was at that epoch),
* the precision plugin (AMP's gradient scaler, when there is one),
* every per-sample store of the run (every :class:`~splml.methods.store.StoreCallback`: AdaGC's
  :class:`~splml.methods.adagc.store.DualEMAStore` with both teachers, and any other).

Lightning's own counters are *not* rolled back: the epoch and step counters, the loggers, the
best checkpoint and the data order keep counting the epochs actually run, so logs never step
backwards and a resumed run finds its place. The stage switch lengthens the loop instead.

A snapshot is taken at the start of an epoch, before any callback's epoch-start work, and it is
restored at the same point; every epoch-start hook then runs exactly as it did when the snapshot
was taken. Snapshots are files in ``<checkpoint dir>/rollback/`` (``epoch_003.pt`` = the state
after 3 epochs), written by rank 0 only while the trigger is pending (at most one per
``every`` epochs of the warm-up), and deleted once the epoch after the decision starts (its
checkpoint holds the decision) or the run reaches its last epoch undecided (a run stopped earlier
keeps them: it may be resumed with the rollback still pending); at a rollback rank 0 reads the
file and broadcasts it, so every rank restores the same state. A run resumed into another folder
copies the snapshots it may still need next to its own checkpoints, as the best checkpoint is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

from splml.methods.store import StoreCallback, broadcast_object

#: Folder of the snapshots, inside the run's checkpoint folder.
SNAPSHOT_DIR = "rollback"


def _stores(trainer: L.Trainer) -> list[StoreCallback]:
    return [cb for cb in trainer.callbacks if isinstance(cb, StoreCallback)]


def training_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What a rollback restores (see the module docstring), as CPU tensors and plain values."""
    return {
        "module": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        "precision": trainer.strategy.precision_plugin.state_dict(),
        "stores": {store.state_key: store.state_dict() for store in _stores(trainer)},
        "global_step": int(trainer.global_step),
    }


def restore_training_state(trainer: L.Trainer, pl_module: L.LightningModule, state: dict[str, Any]) -> None:
    """Load a :func:`training_state` into the running training (tensors move to where their owners live)."""
    stores = {store.state_key: store for store in _stores(trainer)}
    if set(stores) != set(state["stores"]):
        raise RuntimeError(
            f"cannot roll back: the snapshot holds the stores {sorted(state['stores'])}, this run has {sorted(stores)}"
        )
    if len(state["optimizers"]) != len(trainer.optimizers):
        raise RuntimeError(
            f"cannot roll back: the snapshot has {len(state['optimizers'])} optimizers, "
            f"this run {len(trainer.optimizers)}"
        )
    pl_module.load_state_dict(state["module"])
    for optimizer, saved in zip(trainer.optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    for config, saved in zip(trainer.lr_scheduler_configs, state["schedulers"], strict=True):
        config.scheduler.load_state_dict(saved)
    trainer.strategy.precision_plugin.load_state_dict(state["precision"])
    for key, saved in state["stores"].items():
        stores[key].load_state_dict(saved)


class TrainingSnapshots:
    """The snapshot files of one run: which epochs are saved, where, and the rollback to one.

    ``every``: a snapshot every ``every`` epochs (1 = every epoch, the exact trigger epoch is
    always available; larger = less disk, and the rollback goes to the nearest saved epoch, as
    AIO2's save interval does).
    """

    def __init__(self, every: int = 1) -> None:
        if int(every) < 1:
            raise ValueError(f"AdaGC snapshot interval must be >= 1 epoch, got {every}")
        self.every = int(every)
        #: Epochs saved so far (the state after that many epochs).
        self.epochs: list[int] = []
        self._directory: Path | None = None

    # -- where --------------------------------------------------------------------------------
    def attach(self, trainer: L.Trainer) -> Path:
        """This run's snapshot folder: ``<checkpoint dir>/rollback`` (the run folder's ``checkpoints/`` without one)."""
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        base = getattr(checkpoint, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        self._directory = Path(base) / SNAPSHOT_DIR
        return self._directory

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise RuntimeError("TrainingSnapshots.attach(trainer) must be called before the snapshots are used")
        return self._directory

    def path(self, epoch: int) -> Path:
        return self.directory / f"epoch_{int(epoch):03d}.pt"

    # -- writing and reading ----------------------------------------------------------------------
    def due(self, epoch: int) -> bool:
        """Whether a snapshot is taken at the start of ``epoch`` (every ``every`` epochs, from 1)."""
        return epoch >= 1 and epoch % self.every == 0 and epoch not in self.epochs

    def capture(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        """Save the state after ``epoch`` epochs (rank 0 writes; every rank records the epoch)."""
        if trainer.is_global_zero:
            target = self.path(epoch)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                torch.save(training_state(trainer, pl_module), tmp)
                os.replace(tmp, target)  # a crash leaves the old file or the new one, never half of one
            finally:
                tmp.unlink(missing_ok=True)
        self.epochs.append(int(epoch))

    def nearest(self, epoch: int) -> int:
        """The saved epoch nearest ``epoch`` (the earlier one on a tie)."""
        if not self.epochs:
            raise RuntimeError("AdaGC has no snapshot to roll back to (none was taken before the trigger fired)")
        return min(self.epochs, key=lambda saved: (abs(saved - epoch), saved))

    def restore(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> int:
        """Roll the running training back to the state saved after ``epoch`` epochs (rank 0's file, every rank).

        Returns the optimizer step the snapshot was taken at.
        """
        state = None
        if trainer.is_global_zero:
            path = self.path(epoch)
            if not path.is_file():
                raise FileNotFoundError(f"AdaGC's rollback snapshot {path} is missing: the rollback cannot be done")
            state = torch.load(path, map_location="cpu", weights_only=False)
        state = broadcast_object(state)
        restore_training_state(trainer, pl_module, state)
        # Snapshots written before the step was saved: their runs had no trainer.max_steps to lengthen.
        return int(state.get("global_step", trainer.global_step))

    def clear(self, trainer: L.Trainer) -> None:
        """Delete the snapshot folder (rank 0); the caller knows that nothing will read it any more."""
        if self._directory is not None and trainer.is_global_zero and self._directory.exists():
            shutil.rmtree(self._directory, ignore_errors=True)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"directory": None if self._directory is None else str(self._directory), "epochs": list(self.epochs)}

    def load_state_dict(self, state: dict[str, Any], trainer: L.Trainer | None, needed: bool) -> None:
        """Restore the list of snapshots; when they are still ``needed`` and were written elsewhere, copy them here.

        The copies come from next to the checkpoint resumed from (``<its folder>/rollback/``, right
        even when the old run folder was moved), else from where they were written.
        """
        self.epochs = [int(e) for e in state["epochs"]]
        previous = state.get("directory")
        if not needed or not self.epochs or previous is None or trainer is None:
            return
        here = self.attach(trainer)
        if Path(previous) == here:
            return
        resumed_from = getattr(trainer, "ckpt_path", None)
        sources = [Path(resumed_from).parent / SNAPSHOT_DIR] if resumed_from else []
        sources.append(Path(previous))
        if trainer.is_global_zero:
            for epoch in self.epochs:
                name = self.path(epoch).name
                source = next((s / name for s in sources if (s / name).is_file()), None)
                if source is None:
                    raise FileNotFoundError(
                        f"resuming from {resumed_from}: AdaGC's rollback snapshot {name} is neither in "
                        f"{sources[0]} nor in {previous}; the pending rollback cannot be done without it"
                    )
                here.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, here / name)
        trainer.strategy.barrier("carry_adagc_snapshots")
