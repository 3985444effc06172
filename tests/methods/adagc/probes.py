"""A callback that records, per epoch run and per rank, digests of the state a rollback must restore.

Built by Hydra (``+callbacks.probe._target_=tests.methods.adagc.probes.TrainingStateProbe``) in
real training runs, also in DDP subprocesses. At the first batch of every epoch (after every
epoch-start hook, so after a rollback and the stores' epoch-start work) it writes into
``<run>/state_probe_rank<r>.json``: digests of the student's weights, of every optimizer's state,
the learning rates, the scheduler's step count and every per-sample store's checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _digest(tensors: dict[str, Any]) -> str:
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors, key=str):
        value = tensors[name]
        digest.update(str(name).encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(_digest(value).encode())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


class TrainingStateProbe:
    def __new__(cls):  # built by Hydra from a config node; returns a real Callback
        import lightning as L

        from splml.methods.store import StoreCallback

        class _Probe(L.Callback):
            def on_train_batch_start(
                self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
            ) -> None:
                if i != 0:
                    return
                optimizers = [{str(k): v for k, v in opt.state_dict()["state"].items()} for opt in trainer.optimizers]
                record = {
                    "student": _digest(pl_module.state_dict()),
                    "optimizer": _digest({str(i): state for i, state in enumerate(optimizers)}),
                    "lr": [group["lr"] for opt in trainer.optimizers for group in opt.param_groups],
                    "scheduler_steps": [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs],
                    "stores": {
                        cb.state_key: cb.checksum() for cb in trainer.callbacks if isinstance(cb, StoreCallback)
                    },
                }
                path = Path(trainer.default_root_dir) / f"state_probe_rank{trainer.global_rank}.json"
                records = json.loads(path.read_text()) if path.is_file() else {}
                records[str(trainer.current_epoch)] = record
                path.write_text(json.dumps(records, indent=1))

        return _Probe()
