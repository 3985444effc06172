"""The best-checkpoint callback, made to survive a resume into another run folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, except that resuming into another folder keeps the best so far.

    Lightning restores the best score and the best checkpoints only when the resumed run writes
    its checkpoints into the same folder; resumed elsewhere, it forgets the score, so a later and
    worse epoch becomes "best" and the test result changes. Here the best checkpoints are copied
    into the new folder (from next to the checkpoint resumed from, else from where they were
    written) and the score is restored with them, so the resumed run picks the epoch the
    uninterrupted run would and no longer depends on the old folder.
    """

    _trainer: L.Trainer | None = None

    @property
    def state_key(self) -> str:
        # Lightning's key, so checkpoints written by a plain ModelCheckpoint restore into this one.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer  # the checkpoint being restored is known only once loading starts

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous_dir = state_dict.get("dirpath")
        if previous_dir is None or previous_dir == self.dirpath or not state_dict.get("best_model_path"):
            super().load_state_dict(state_dict)
            return
        resumed_from = getattr(self._trainer, "ckpt_path", None)
        carried = {path: self._carry(path, resumed_from) for path in state_dict.get("best_k_models", {})}
        for key in ("best_model_path", "kth_best_model_path"):
            if state_dict.get(key) and state_dict[key] not in carried:
                carried[state_dict[key]] = self._carry(state_dict[key], resumed_from)
        if self._trainer is not None:
            self._trainer.strategy.barrier("carry_best_checkpoints")
        super().load_state_dict({
            **state_dict,
            "dirpath": self.dirpath,
            "best_k_models": {carried[p]: score for p, score in state_dict.get("best_k_models", {}).items()},
            "best_model_path": carried[state_dict["best_model_path"]],
            "kth_best_model_path": carried.get(state_dict.get("kth_best_model_path"), ""),
            "last_model_path": "",
        })  # fmt: skip

    def _carry(self, previous: str, resumed_from: str | None) -> str:
        """Copy one checkpoint of the resumed run into this run's folder; returns its new path."""
        assert self.dirpath is not None
        target = Path(self.dirpath) / Path(previous).name
        sources = [Path(resumed_from).parent / target.name] if resumed_from else []
        sources.append(Path(previous))
        source = next((s for s in sources if s.is_file()), None)
        if source is None:
            raise FileNotFoundError(
                f"resuming from {resumed_from}: its best checkpoint {target.name} is neither next to it nor at "
                f"{previous}, so the best epoch so far cannot be kept; put it next to the checkpoint resumed from"
            )
        copier = self._trainer is None or self._trainer.is_global_zero
        if copier and not (target.exists() and target.samefile(source)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return str(target)
