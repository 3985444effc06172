"""The benchmark archive: small files of finished runs copied between a sweep folder and the repository."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from splml.utils.archive import run_archived_sweeps, sync_runs


def test_sync_copies_the_kept_files_of_runs_with_results_once(tmp_path):
    src, dst = tmp_path / "sweep", tmp_path / "archive"
    done = src / "loss=macl,seed=1"
    (done / "csv").mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "csv" / "metrics.csv").write_text("epoch\n0\n")
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    running = src / "loss=supcon,seed=1"
    running.mkdir()
    (running / "train.log").write_text("still training")
    assert sync_runs(src, dst) == 2
    assert (dst / done.name / "results.json").is_file() and (dst / done.name / "csv" / "metrics.csv").is_file()
    assert not (dst / done.name / "checkpoints").exists() and not (dst / running.name).exists()
    assert sync_runs(src, dst) == 0, "identical files are not copied again"
    (done / "results.json").write_text('{"status": "completed"}')
    assert sync_runs(src, dst) == 1
    assert sync_runs(tmp_path / "missing", dst) == 0


def test_sync_leaves_out_a_run_whose_results_cannot_be_read(tmp_path):
    src, dst = tmp_path / "sweep", tmp_path / "archive"
    (src / "killed").mkdir(parents=True)
    (src / "killed" / "results.json").write_text('{"status": "compl')  # killed while writing
    assert sync_runs(src, dst) == 0 and not (dst / "killed").exists()


def test_archived_sweeps_restore_first_and_archive_what_finished_even_when_a_sweep_fails(tmp_path):
    archive, sweep = tmp_path / "archive", tmp_path / "sweep"
    (archive / "old").mkdir(parents=True)
    (archive / "old" / "results.json").write_text('{"status": "completed"}')
    # The first "sweep" sees the restored run and finishes one more; the second fails.
    write_run = (
        "import pathlib, sys; s = pathlib.Path(sys.argv[1]); assert (s / 'old' / 'results.json').is_file(); "
        "(s / 'new').mkdir(); (s / 'new' / 'results.json').write_text('{}')"
    )
    commands = [[sys.executable, "-c", write_run, str(sweep)], [sys.executable, "-c", "raise SystemExit(3)"]]
    with pytest.raises(subprocess.CalledProcessError):
        run_archived_sweeps(commands, archive, sweep, cwd=tmp_path, env=os.environ)
    assert (archive / "new" / "results.json").read_text() == "{}"
    assert sorted(p.parent.name for p in archive.glob("*/results.json")) == ["new", "old"]
