"""What ``splml-predict`` writes and reads: the predictions table, the list of skipped inputs, per-class thresholds.

* the predictions table (``.csv`` or ``.parquet``): one row per input, ``id`` (and ``path`` for
  files), ``prob/<class>`` per class in the model's order, ``top_k`` (the k most probable
  classes) and ``labels`` (the classes at or above their threshold); a retrieval model gives
  ``embedding/<i>`` columns instead. In CSV the two label lists are joined by ``;``, in parquet
  they are lists. Written to a temporary file and renamed, so a crash never leaves half a table.
* ``<out stem>_skipped.csv`` (``id,reason``): the inputs ``on_error=skip`` left out.
* thresholds JSON: ``{"thresholds": {<class>: t, ...}, ...}`` (or a plain ``{<class>: t}``), every
  class of the model exactly once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.io.errors import DataFormatError

#: Joins the label lists in a CSV table (class names hold commas, never semicolons).
LIST_SEPARATOR = ";"
TABLE_SUFFIXES = (".csv", ".parquet")


def check_table_path(path: Path) -> Path:
    """``path`` if it names a table this module writes (``.csv``/``.parquet``), else an error naming it."""
    if Path(path).suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"out={path}: the predictions table must end in {' or '.join(TABLE_SUFFIXES)}")
    return Path(path)


def skipped_path(out: Path) -> Path:
    """Where the inputs left out by ``on_error=skip`` are listed, next to the table."""
    return out.with_name(f"{out.stem}_skipped.csv")


def write_predictions(
    out: Path,
    ids: Sequence[str],
    *,
    class_names: Sequence[str] | None = None,
    probs: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    top_k: int = 0,
    embeddings: np.ndarray | None = None,
    paths: Sequence[str] | None = None,
) -> Path:
    """Write the predictions table (see the module docstring); returns ``out``.

    Classification: ``probs`` (N x L, in ``class_names`` order) with per-class ``thresholds``
    (L) and ``top_k``; retrieval: ``embeddings`` (N x D).
    """
    import pandas as pd

    out = check_table_path(out)
    columns: dict[str, Any] = {"id": list(ids)}
    if paths is not None:
        columns["path"] = list(paths)
    csv = out.suffix.lower() == ".csv"
    if probs is not None:
        assert class_names is not None and thresholds is not None
        for c, name in enumerate(class_names):
            columns[f"prob/{name}"] = probs[:, c]
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        top = [[class_names[c] for c in row] for row in order]
        above = [[class_names[c] for c in np.flatnonzero(row >= thresholds)] for row in probs]
        columns["top_k"] = [LIST_SEPARATOR.join(x) for x in top] if csv else top
        columns["labels"] = [LIST_SEPARATOR.join(x) for x in above] if csv else above
    if embeddings is not None:
        for d in range(embeddings.shape[1]):
            columns[f"embedding/{d}"] = embeddings[:, d]
    table = pd.DataFrame(columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if csv:
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_skipped(out: Path, skipped: Sequence[tuple[str, str]]) -> Path:
    """List the inputs left out (``id,reason``) next to the table; returns the file."""
    from splml.io.run_folder import write_rows

    return write_rows(skipped_path(out), ("id", "reason"), skipped)


def read_thresholds(path: Path, class_names: Sequence[str]) -> np.ndarray:
    """Per-class thresholds from a JSON file, in ``class_names`` order; a missing, unknown or bad class is an error."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read thresholds ({type(exc).__name__}: {exc})") from exc
    if isinstance(record, Mapping) and isinstance(record.get("thresholds"), Mapping):
        record = record["thresholds"]
    if not isinstance(record, Mapping):
        raise DataFormatError(f'{path}: expected {{class name: threshold}} (or {{"thresholds": {{...}}}})')
    unknown = [name for name in record if name not in class_names]
    missing = [name for name in class_names if name not in record]
    if unknown or missing:
        raise DataFormatError(
            f"{path}: the thresholds must name every class of the model exactly once; unknown {unknown[:5]}, "
            f"missing {missing[:5]}"
        )
    values = []
    for name in class_names:
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 or math.isnan(value):
            raise DataFormatError(f"{path}: threshold of {name!r} is {value!r}; it must be a number in [0, 1]")
        values.append(float(value))
    return np.asarray(values, dtype=np.float64)


def write_thresholds(path: Path, class_names: Sequence[str], thresholds: np.ndarray, **about: Any) -> Path:
    """Write per-class thresholds (with what they came from, ``about``) as :func:`read_thresholds` reads them."""
    record = {"thresholds": {name: float(t) for name, t in zip(class_names, thresholds, strict=True)}, **about}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
