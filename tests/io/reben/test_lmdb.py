"""A truncated data.mdb is a named error everywhere the reBEN LMDB is opened, never a SIGBUS.

Reading a page past the end of a truncated memory-mapped file kills the process with SIGBUS,
which no ``except`` catches: the tests that would read such a page run in subprocesses or
DataLoader workers, so that the old behaviour fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splml.data.datamodules.reben import ReBENDataModule
from splml.data.datasets.reben import ReBENDataset
from splml.io.errors import DataFormatError
from splml.io.reben.lmdb import TruncatedLMDBError, close_lmdb, open_reben_lmdb

REPO = Path(__file__).resolve().parents[3]
ENCODE_SCRIPT = REPO / "data_prep" / "encode_reben.py"
TRAIN_TINY = [
    "dataset=ben", "labels=random", "loss=an", "backbone=resnet10t", "trainer.max_epochs=1",
    "dataset.datamodule.num_workers=0", "dataset.datamodule.batch_size=16",
    "dataset.datamodule.pin_memory=false", "dataset.datamodule.persistent_workers=false",
]  # fmt: skip


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst)
    return dst


def _truncate(root: Path, fraction: float = 0.5) -> tuple[int, int]:
    """Cut ``root``/lmdb/data.mdb to ``fraction`` of its size: (full size, truncated size)."""
    data = root / "lmdb" / "data.mdb"
    full = data.stat().st_size
    cut = int(full * fraction)
    os.truncate(data, cut)
    return full, cut


@pytest.fixture
def truncated(tiny_reben: Path, tmp_path: Path) -> tuple[Path, int, int]:
    root = _copy(tiny_reben, tmp_path / "truncated")
    return (root, *_truncate(root))


def _assert_named(message: str, root: Path, full: int, cut: int) -> None:
    assert str(root / "lmdb" / "data.mdb") in message
    assert "truncated or still being written" in message
    assert f"{cut:,} bytes" in message and f"{full:,} bytes" in message


def test_opener_accepts_a_complete_file_and_names_a_truncated_one(tiny_reben, truncated, tmp_path):
    complete = _copy(tiny_reben, tmp_path / "complete")  # a path no dataset of this process holds open
    env = open_reben_lmdb(complete / "lmdb")
    try:
        # The LMDB's own metadata gives what the file must hold; a complete file holds exactly that.
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        assert needed == (complete / "lmdb" / "data.mdb").stat().st_size
    finally:
        env.close()
    root, full, cut = truncated
    with pytest.raises(TruncatedLMDBError) as info:
        open_reben_lmdb(root / "lmdb")
    _assert_named(str(info.value), root, full, cut)


def test_a_file_too_short_to_hold_its_header_is_named(tiny_reben, tmp_path):
    for size in (0, 100, 4096):  # empty, inside the first meta page, one of the two meta pages
        root = _copy(tiny_reben, tmp_path / f"short{size}")
        os.truncate(root / "lmdb" / "data.mdb", size)
        with pytest.raises(DataFormatError, match=rf"{root / 'lmdb' / 'data.mdb'} \({size:,} bytes\).*truncated"):
            open_reben_lmdb(root / "lmdb")


def test_reader_refuses_a_truncated_lmdb_when_built(truncated):
    root, full, cut = truncated
    with pytest.raises(TruncatedLMDBError) as info:
        ReBENDataset(root, "train", bands="s2")
    _assert_named(str(info.value), root, full, cut)


def test_datamodule_setup_refuses_a_truncated_lmdb(truncated):
    root, full, cut = truncated
    dm = ReBENDataModule(root=root, bands="all", batch_size=8)
    with pytest.raises(TruncatedLMDBError) as info:
        dm.setup("fit")
    _assert_named(str(info.value), root, full, cut)


def test_dataloader_workers_name_a_file_truncated_after_the_dataset_was_built(tiny_reben, tmp_path):
    # The file is complete when the dataset is built, then cut (a copy overwritten while the run
    # starts): each worker process opens the LMDB itself and must refuse it, not die of SIGBUS.
    root = _copy(tiny_reben, tmp_path / "copy")
    ds = ReBENDataset(root, "train", bands="rgb")
    try:
        full, cut = _truncate(root, 0.3)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
        with pytest.raises(TruncatedLMDBError) as info:
            next(iter(loader))
        _assert_named(str(info.value), root, full, cut)
    finally:
        close_lmdb(root / "lmdb")


def test_a_file_cut_while_open_is_named_when_the_next_dataset_is_built(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path / "copy")
    ReBENDataset(root, "train", bands="rgb")  # opens and caches this process's handle
    full, cut = _truncate(root, 0.6)
    with pytest.raises(TruncatedLMDBError) as info:
        ReBENDataset(root, "validation", bands="rgb")
    _assert_named(str(info.value), root, full, cut)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_verify_names_a_truncated_lmdb(truncated, tmp_path):
    root, full, cut = truncated
    proc = _cli(
        str(ENCODE_SCRIPT), "--verify", "--quiet", "--metadata", str(root / "metadata.parquet"),
        "--out", str(root / "lmdb"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, f"exit status {proc.returncode} (-7 is SIGBUS)\n{proc.stderr[-3000:]}"
    _assert_named(proc.stderr, root, full, cut)


def test_train_cli_exits_with_the_named_error(truncated, tmp_path):
    root, full, cut = truncated
    proc = _cli("-m", "splml.train", *TRAIN_TINY, f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, f"exit status {proc.returncode} (-7 is SIGBUS)\n{proc.stderr[-3000:]}"
    assert "TruncatedLMDBError" in proc.stderr
    _assert_named(proc.stderr, root, full, cut)


def test_multirun_records_the_truncated_job_as_failed_and_goes_on(tiny_reben, truncated, tmp_path):
    root, full, cut = truncated
    sweep = tmp_path / "sweep"
    proc = _cli(
        "-m", "splml.train", "-m", *TRAIN_TINY, f"dataset.root={root},{tiny_reben}",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit status {proc.returncode} (-7 is SIGBUS)\n{proc.stderr[-3000:]}"
    by_root = {}
    for path in sweep.glob("*/results.json"):
        result = json.loads(path.read_text())
        by_root[next(o.split("=", 1)[1] for o in result["overrides"] if o.startswith("dataset.root="))] = result
    assert set(by_root) == {str(root), str(tiny_reben)}, "both jobs ran and recorded their result"
    failed = by_root[str(root)]
    assert failed["status"] == "failed" and failed["error"].startswith("TruncatedLMDBError")
    _assert_named(failed["error"], root, full, cut)
    done = by_root[str(tiny_reben)]
    assert done["status"] == "completed" and done["test/num_samples"] == 24
