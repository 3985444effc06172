"""Compose the real Hydra configs in-process for fast end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from splml.builders import config_dir, register_resolvers

TINY_DATA = [
    "dataset.datamodule.synthetic.n_train=48",
    "dataset.datamodule.synthetic.n_validation=24",
    "dataset.datamodule.synthetic.n_test=24",
    "dataset.datamodule.batch_size=16",
    "backbone=resnet10t",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
]


def compose_train(tmp: Path, *overrides: str, cache_dir: Path | None = None) -> DictConfig:
    """The training config as ``python -m splml.train`` would compose it, writing under ``tmp``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TINY_DATA, f"paths.cache_dir={cache_dir or tmp / 'cache'}", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
    return cfg


class StopAfterEpochs:
    """Simulates an interrupted run: stops training after ``epochs`` epochs (schedule unchanged)."""

    def __new__(cls, epochs: int):  # built by Hydra from a config node; returns a real Callback
        import lightning as L

        class _Stop(L.Callback):
            def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if trainer.current_epoch + 1 >= epochs:
                    trainer.should_stop = True

        return _Stop()


class ExitAtEpoch:
    """Simulates a killed job: the process ends as epoch ``epoch`` starts (after the previous epoch's
    checkpoint), in runs whose folder path contains ``$SPLML_TEST_EXIT_IN``; does nothing when unset."""

    def __new__(cls, epoch: int = 1):  # built by Hydra from a config node; returns a real Callback
        import os

        import lightning as L

        class _Exit(L.Callback):
            def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                where = os.environ.get("SPLML_TEST_EXIT_IN")
                if where and where in str(trainer.default_root_dir) and trainer.current_epoch >= epoch:
                    os._exit(17)

        return _Exit()


def run_train_cli(cwd: Path, *overrides: str, timeout: int = 900) -> None:
    """``python -m splml.train <overrides>`` in a subprocess; fails the test with its stderr if it fails."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", *overrides],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]


def read_wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``).

    The file is a 7-byte header (``:W&B``, magic, version) then LevelDB-style log blocks of
    32 KiB: each chunk has a 7-byte header (crc32, length, type); a record is one FULL chunk or
    FIRST, MIDDLE..., LAST chunks; a block tail shorter than a chunk header is zero padding.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos = 32768, 7
    records, chunks = [], []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += 7
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += room - 7
            continue
        chunks.append(data[pos : pos + length])
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records
