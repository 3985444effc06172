"""Benchmark archives: the small files of finished runs, kept in the repository next to their table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from splml.io.run_folder import read_results

#: What a run leaves that the report needs (results and per-epoch curves), relative to its folder.
KEPT_FILES: tuple[str, ...] = ("results.json", "csv/metrics.csv", ".hydra/overrides.yaml")


def sync_runs(src: Path, dst: Path, kept: Sequence[str] = KEPT_FILES) -> int:
    """Copy the ``kept`` files of every run folder below ``src`` that has a results.json to ``dst``.

    Runs keep their folder names; files that are already identical are not copied again. Used
    both ways by the benchmark scripts: sweep folder -> archive after a sweep, and archive ->
    sweep folder before one (with ``skip_completed`` the sweep then only trains what is missing).
    Completed and failed runs are copied (the report lists failures); one whose results.json cannot
    be read (a job killed while writing it) is not. Returns the number of files copied.
    """
    copied = 0
    if not src.is_dir():
        return copied
    for results in src.glob("*/results.json"):
        if read_results(results) is None:
            continue
        run = results.parent
        for name in kept:
            source, target = run / name, dst / run.name / name
            if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied += 1
    return copied


def run_archived_sweeps(
    commands: Sequence[Sequence[str]], archive: Path, sweep_dir: Path, *, cwd: Path, env: Mapping[str, str]
) -> None:
    """Run benchmark sweeps so that only missing runs train, and keep every finished one.

    The archive is restored into ``sweep_dir`` first (the commands pass ``skip_completed=true``
    and ``hydra.sweep.dir=<sweep_dir>``), each command then runs in turn, and the finished runs
    are archived again even when a sweep fails or is interrupted.
    """
    print(f"restored {sync_runs(archive, sweep_dir)} archived files into {sweep_dir}", flush=True)
    try:
        for cmd in commands:
            print("+", " ".join(cmd), flush=True)
            subprocess.run(list(cmd), check=True, cwd=cwd, env=dict(env))
    finally:
        print(f"archived {sync_runs(sweep_dir, archive)} files into {archive}", flush=True)


def report_archive(archive: Path, out: Path, *options: str, cwd: Path) -> int:
    """``python -m splml.report <archive> --out <out> [options]``; returns the number of archived runs."""
    report = [sys.executable, "-m", "splml.report", str(archive), "--out", str(out), *options]
    print("+", " ".join(report), flush=True)
    subprocess.run(report, check=True, cwd=cwd)
    return sum(1 for _ in archive.glob("*/results.json"))
