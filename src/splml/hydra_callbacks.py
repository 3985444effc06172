"""Hydra callbacks: what a sweep reports when it ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from splml.io.run_folder import RESULTS_FILE, read_results
from splml.runs import is_completed

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """At the end of a multirun, count the runs of the sweep folder and list the failed ones.

    A job that fails inside a sweep records ``status: failed`` in its ``results.json`` and the
    sweep goes on (``splml.train``); this prints, once all jobs are done, how many runs of the
    folder completed and which failed with which error, and writes the same as
    ``sweep_summary.md`` in the sweep folder. It reads the folder rather than the jobs' return
    values, so it works with every launcher (joblib workers and SLURM jobs run elsewhere) and a
    re-run sweep counts the runs it skipped as completed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        lines = summarize_sweep(sweep_dir)
        for line in lines:
            log.info("%s", line)
        if sweep_dir.is_dir():
            (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")


def summarize_sweep(sweep_dir: Path) -> list[str]:
    """Markdown lines: counts of completed / failed runs and one line per failed run."""
    completed, failed, unreadable = [], [], []
    for path in sorted(sweep_dir.rglob(RESULTS_FILE)) if sweep_dir.is_dir() else []:
        run = str(path.parent.relative_to(sweep_dir))
        result = read_results(path)
        if result is None:
            unreadable.append(run)
            continue
        if is_completed(result):
            completed.append(run)
        else:
            failed.append(f"{run}: {result.get('error', 'failed')}")
    lines = [f"sweep {sweep_dir}: {len(completed)} completed, {len(failed)} failed, {len(unreadable)} unreadable"]
    lines += [f"- failed: {f}" for f in failed]
    lines += [f"- unreadable: {u}/{RESULTS_FILE} (skip_completed=true re-runs it)" for u in unreadable]
    return lines
