"""What a run folder says about itself: its ``results.json``, the job that wrote it, and whether it completed.

One home for the questions asked of a finished or interrupted run: a sweep re-run with
``skip_completed=true`` (is there a completed run of this job, or a checkpoint of it to resume
from?), the sweep summary (how many runs completed?) and the report (which runs are the same
setting?).

A job is identified by its command-line overrides (Hydra's ``overrides.task``), sorted, without
the ones that do not change what it computes (``NOT_IDENTITY``). ``splml.train`` records them in
``results.json`` and in every checkpoint, because Hydra rewrites ``<job dir>/.hydra/`` when a
job starts, so the folder's own ``.hydra/overrides.yaml`` describes whichever job ran there last.
The files themselves are read and written by :mod:`splml.io.run_folder`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splml.io.run_folder import CHECKPOINT_DIR, RESULTS_FILE, load_checkpoint, read_hydra_overrides, read_results

log = logging.getLogger(__name__)

#: Overrides that leave what a job computes unchanged: not part of its identity or folder name.
NOT_IDENTITY = ("skip_completed", "ckpt_path")
#: Checkpoint entry holding the job's identity overrides.
CHECKPOINT_OVERRIDES_KEY = "splml_overrides"
#: Groups compared for runs written before results.json recorded the overrides.
LEGACY_IDENTITY_GROUPS = ("dataset", "labels", "loss", "backbone", "head", "ablation")


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``: the config key an override sets (or deletes, ``~a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def identity_overrides(overrides: Iterable[Any]) -> list[str]:
    """A job's overrides as runs are compared: sorted, without those that change nothing it computes."""
    return sorted(str(o) for o in overrides if override_key(str(o)) not in NOT_IDENTITY)


_UNSAFE = re.compile(r"[^A-Za-z0-9_=,.+~@%\[\]-]")
MAX_DIR_NAME = 120


def job_dir_name(overrides: Iterable[Any], num: Any = 0) -> str:
    """A sweep job's folder name: its identity overrides joined by commas (``labels=random,seed=1``).

    Overrides whose value is a path are left out of the readable part; a name that lost them, or
    had to be shortened or cleaned of characters a file name cannot hold, ends in a hash of all
    the overrides, so two different jobs never share a folder. A job without overrides is named
    by its number.
    """
    parts = identity_overrides(overrides)
    if not parts:
        return str(num)
    full = ",".join(parts)
    name = _UNSAFE.sub("_", ",".join(p for p in parts if "/" not in p.split("=", 1)[-1]))
    if name != full or len(name) > MAX_DIR_NAME:
        digest = hashlib.sha1(full.encode()).hexdigest()[:10]
        name = f"{name[: MAX_DIR_NAME - len(digest) - 1]}-{digest}" if name else digest
    return name


def is_completed(result: Mapping[str, Any] | None) -> bool:
    """Completed: readable and not marked failed (results written before ``status`` existed count as completed)."""
    return result is not None and result.get("status", "completed") == "completed"


def recorded_overrides(run_dir: Path, result: Mapping[str, Any] | None) -> list[str] | None:
    """The identity overrides of the job that wrote ``run_dir``: from its results.json, else from
    ``.hydra/overrides.yaml`` (runs written before results.json recorded them); None if neither says."""
    if result is not None and result.get("overrides") is not None:
        return identity_overrides(result["overrides"])
    hydra_overrides = read_hydra_overrides(run_dir)
    return identity_overrides(hydra_overrides) if hydra_overrides is not None else None


def checkpoint_run_dirs(ckpt_path: Path, ckpt: Mapping[str, Any]) -> list[Path]:
    """Where the run that wrote a checkpoint may be found, most likely first.

    The folder above the checkpoint's ``checkpoints/`` folder (right even when the run folder has
    been moved or copied elsewhere), then the run folder recorded in the checkpoint's config.
    """
    candidates = [Path(ckpt_path).resolve().parent.parent]
    recorded = ((ckpt.get("splml_config") or {}).get("paths") or {}).get("output_dir")
    if recorded:
        candidates.append(Path(recorded).resolve())
    return list(dict.fromkeys(candidates))


@dataclass
class JobPlan:
    """What a re-run sweep job does: nothing (a completed run of it exists), resume, or start afresh."""

    completed_dir: Path | None = None
    result: dict[str, Any] | None = None
    resume_from: Path | None = None


def plan_job(
    run_dir: Path,
    overrides: list[str],
    seed: int,
    choices: Mapping[str, Any],
    sweep_dir: Path | None = None,
) -> JobPlan:
    """Decide how a job continues, from its own folder and, in a sweep, every other run of the sweep folder.

    - A completed run with the same identity (in ``run_dir``, else anywhere below ``sweep_dir``):
      nothing to do.
    - Else the newest ``checkpoints/last.ckpt`` recording the same identity (an interrupted run,
      without a completed results.json): resume from it.
    - Else start afresh. ``run_dir`` holding the completed run or the checkpoint of *another* job
      is an error rather than something to overwrite (a sweep whose folders are named by job
      number and whose lists changed).
    """
    overrides = identity_overrides(overrides)
    own_results = run_dir / RESULTS_FILE
    own = read_results(own_results) if own_results.is_file() else None
    if is_completed(own):
        assert own is not None
        if _same_job(own, overrides, seed, choices):
            return JobPlan(completed_dir=run_dir, result=own)
        raise FileExistsError(
            f"{own_results} holds the completed run of another job ({_describe(own)}), which this job "
            f"({','.join(overrides) or 'no overrides'}) would overwrite. Sweep folders named by job number "
            "change meaning when the sweep's lists change: use the default hydra.sweep.subdir (named by the "
            "job's overrides) or a new hydra.sweep.dir."
        )
    others = _other_runs(sweep_dir, run_dir)
    for path in others:
        result = read_results(path)
        if is_completed(result) and recorded_overrides(path.parent, result) == overrides:
            return JobPlan(completed_dir=path.parent, result=result)

    if own is None or own.get("status") != "failed":
        own_ckpt = run_dir / CHECKPOINT_DIR / "last.ckpt"
        if own_ckpt.is_file():
            recorded = load_checkpoint(own_ckpt).get(CHECKPOINT_OVERRIDES_KEY)
            if recorded is not None and identity_overrides(recorded) == overrides:
                return JobPlan(resume_from=own_ckpt)
            if recorded is not None:
                raise FileExistsError(
                    f"{own_ckpt} is the checkpoint of another job ({','.join(recorded)}), which this job "
                    f"({','.join(overrides)}) would overwrite; use the default hydra.sweep.subdir or a new "
                    "hydra.sweep.dir."
                )
            log.warning("%s does not record its job (written by an older version): not resumed", own_ckpt)
    candidates = []
    for ckpt_path in _interrupted_checkpoints(sweep_dir, run_dir):
        ckpt = load_checkpoint(ckpt_path)
        recorded = ckpt.get(CHECKPOINT_OVERRIDES_KEY)
        if recorded is not None and identity_overrides(recorded) == overrides:
            candidates.append((int(ckpt.get("epoch", -1)), str(ckpt_path)))
    if candidates:
        return JobPlan(resume_from=Path(max(candidates)[1]))
    return JobPlan()


def _same_job(result: Mapping[str, Any], overrides: list[str], seed: int, choices: Mapping[str, Any]) -> bool:
    if result.get("overrides") is not None:
        return identity_overrides(result["overrides"]) == overrides
    # Written before the overrides were recorded: the seed and the group choices it names must agree.
    recorded = result.get("choices") or {}
    return result.get("seed") == seed and all(
        str(recorded[g]) == str(choices.get(g)) for g in LEGACY_IDENTITY_GROUPS if g in recorded
    )


def _describe(result: Mapping[str, Any]) -> str:
    if result.get("overrides") is not None:
        return ",".join(result["overrides"]) or "no overrides"
    return f"seed={result.get('seed')}, " + ", ".join(f"{k}={v}" for k, v in (result.get("choices") or {}).items())


def _other_runs(sweep_dir: Path | None, run_dir: Path) -> list[Path]:
    if sweep_dir is None or not sweep_dir.is_dir():
        return []
    own = run_dir.resolve()
    return sorted(p for p in sweep_dir.rglob(RESULTS_FILE) if p.parent.resolve() != own)


def _interrupted_checkpoints(sweep_dir: Path | None, run_dir: Path) -> list[Path]:
    """``last.ckpt`` files of the sweep folder's other runs that have no readable results.json."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return []
    own = run_dir.resolve()
    found = []
    for ckpt in sorted(sweep_dir.rglob(f"{CHECKPOINT_DIR}/last.ckpt")):
        folder = ckpt.parent.parent
        if folder.resolve() == own:
            continue
        results = folder / RESULTS_FILE
        if not results.is_file() or read_results(results) is None:
            found.append(ckpt)
    return found
