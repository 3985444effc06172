"""What a run folder holds, read and written in one place.

``results.json`` (written atomically, read leniently by sweeps and strictly by the report),
``csv/metrics.csv`` (Lightning's CSV log: per-epoch curves and the rows a resumed run carries
over), ``checkpoints/*.ckpt`` (:mod:`splml.io.checkpoint`, re-exported here),
``.hydra/overrides.yaml`` and the small CSV tables a run writes next to it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

# Checkpoints have their own owner (what splml stores in them: config, data spec, logger runs).
from splml.io.checkpoint import load_checkpoint  # noqa: F401 - re-exported for the readers of run folders

log = logging.getLogger(__name__)

RESULTS_FILE: Final[str] = "results.json"
#: Where the checkpoints of a run live, relative to its folder (conf/callbacks/default.yaml).
CHECKPOINT_DIR: Final[str] = "checkpoints"
#: Where Lightning's CSV log lives, relative to the run folder (conf/logger/csv.yaml).
CSV_DIR: Final[str] = "csv"
METRICS_FILE: Final[str] = "metrics.csv"


class RunFolderError(ValueError):
    """A file of a run folder cannot be read; the message names it."""


# -- results.json ------------------------------------------------------------------------------
def write_results(path: Path, results: Mapping[str, Any]) -> None:
    """Write ``results.json`` atomically: a reader (or a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_results(path: Path) -> dict[str, Any]:
    """The content of a ``results.json``; :class:`RunFolderError` naming the file when it cannot be read."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(result, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    return result


def read_results(path: Path) -> dict[str, Any] | None:
    """The content of a ``results.json``; None, with a warning naming the file, when it cannot be read."""
    try:
        return load_results(path)
    except RunFolderError as exc:
        log.warning("unreadable %s (%s): the run counts as not completed", path, str(exc).removeprefix(f"{path}: "))
        return None


# -- csv/metrics.csv -----------------------------------------------------------------------------
def _parse(value: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_metric_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Lightning ``metrics.csv``, blanks left out, numbers parsed (ints stay ints)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def metrics_file(run_dir: Path) -> Path | None:
    """The ``metrics.csv`` of a run folder (the last of its CSV log's versions), or None."""
    csv_dir = Path(run_dir) / CSV_DIR
    candidates = sorted(csv_dir.rglob(METRICS_FILE)) if csv_dir.is_dir() else []
    return candidates[-1] if candidates else None


def read_epoch_metrics(run_dir: Path, columns: Sequence[str]) -> dict[str, dict[int, float]]:
    """Per-epoch values of ``columns`` from a run's Lightning CSV log (empty when the run has none).

    Lightning writes one row per logging call with blanks elsewhere, so the last non-blank value
    of each epoch is kept; values that are not numbers are left out.
    """
    curves: dict[str, dict[int, float]] = {c: {} for c in columns}
    path = metrics_file(run_dir)
    if path is None:
        return curves
    for row in read_metric_rows(path):
        epoch = row.get("epoch")
        if not isinstance(epoch, (int, float)):
            continue
        for column in columns:
            value = row.get(column)
            if isinstance(value, (int, float)):
                curves[column][int(epoch)] = float(value)
    return curves


# -- the rest of the folder ------------------------------------------------------------------------
def read_hydra_overrides(run_dir: Path) -> list[str] | None:
    """The overrides in ``<run>/.hydra/overrides.yaml`` (None when the run has no such file)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A small CSV table next to a run or a dataset (one writer keeps the format uniform)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
