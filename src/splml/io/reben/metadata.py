"""``metadata.parquet``: one reader (grouped by split, every problem named) and one writer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from splml.io.errors import DataFormatError
from splml.io.reben.format import (
    CLC_TO_CLASS,
    METADATA_COLUMNS,
    NUM_CLASSES,
    SNOW_CLOUD_METADATA_FILE,
    SPLITS,
    PatchKeys,
    class_indices,
)

#: How many duplicates an error message lists before giving the count.
_MAX_LISTED = 10


@dataclass(frozen=True)
class PatchRecord:
    """One row of metadata.parquet, reduced to what the reader needs."""

    patch_id: str
    s1_name: str
    labels: tuple[str, ...]
    country: str
    snow: bool
    cloud: bool


def read_metadata(path: Path, *, include_snow_cloud: bool = False) -> dict[str, list[PatchRecord]]:
    """Read metadata.parquet (and optionally the snow/cloud file) grouped by split.

    Raises :class:`~splml.io.errors.DataFormatError` naming the file for a missing column, an
    unknown split, an unknown class name or a duplicate ``patch_id`` / ``s1_name`` (see
    :func:`read_metadata_files`).
    """
    path = Path(path)
    paths = [path]
    if include_snow_cloud:
        extra = path.with_name(SNOW_CLOUD_METADATA_FILE)
        if not extra.is_file():
            raise FileNotFoundError(
                f"include_snow_cloud=true but {extra} does not exist; it ships separately with reBEN"
            )
        paths.append(extra)
    return read_metadata_files(paths)


def read_metadata_files(paths: Sequence[Path]) -> dict[str, list[PatchRecord]]:
    """Read several metadata files as one, grouped by split.

    ``patch_id`` and ``s1_name`` must each be unique over all the files: a repeated patch would
    be trained on twice, and two patches sharing an ``s1_name`` would read the same radar image
    (in the LMDB the second overwrites the first). Every duplicate is named with its rows.
    """
    by_split: dict[str, list[PatchRecord]] = {s: [] for s in SPLITS}
    first_row: dict[str, dict[str, str]] = {"patch_id": {}, "s1_name": {}}
    duplicates: dict[str, list[str]] = {"patch_id": [], "s1_name": []}
    required = ("patch_id", "labels", "split", "s1_name")
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"metadata file not found: {p}")
        table = pq.read_table(p)
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DataFormatError(f"{p}: missing column(s) {missing}; found {table.column_names}")
        cols = table.to_pydict()
        n = table.num_rows
        country = cols.get("country", [""] * n)
        snow = cols.get("contains_seasonal_snow", [False] * n)
        cloud = cols.get("contains_cloud_or_shadow", [False] * n)
        for row in range(n):
            pid, split = cols["patch_id"][row], cols["split"][row]
            if split not in by_split:
                raise DataFormatError(
                    f"{p}, row {row} (patch {pid}): unknown split {split!r}; expected one of {SPLITS}"
                )
            where = f"{p}, row {row} (patch {pid})" if len(paths) > 1 else f"row {row} (patch {pid})"
            for column, value in (("patch_id", pid), ("s1_name", cols["s1_name"][row])):
                if value in first_row[column]:
                    duplicates[column].append(f"duplicate {column} {value}: {first_row[column][value]} and {where}")
                    break  # a repeated row is named once, as a duplicate patch_id
                first_row[column][value] = where
            labels = tuple(cols["labels"][row] or ())
            if not labels:
                raise DataFormatError(f"{p}, row {row} (patch {pid}): empty label list")
            class_indices(labels, where=f"{p}, row {row} (patch {pid})")
            by_split[split].append(
                PatchRecord(pid, cols["s1_name"][row], labels, country[row], bool(snow[row]), bool(cloud[row]))
            )
    found = duplicates["patch_id"] + duplicates["s1_name"]
    if found:
        shown = "; ".join(found[:_MAX_LISTED])
        more = f"; ... ({len(found)} duplicates in all)" if len(found) > _MAX_LISTED else ""
        raise DataFormatError(
            f"{', '.join(map(str, paths))}: {shown}{more}. Every patch needs its own patch_id and its own s1_name "
            "(a shared s1_name would read the same radar image for both patches)"
        )
    return by_split


def load_patch_list(metadata: Path | Sequence[Path]) -> list[PatchKeys]:
    """Patches of one or more metadata files, sorted by patch id (the LMDB key order).

    Uses :func:`read_metadata_files`, so the encoder and the verification refuse exactly what
    the reader would refuse: duplicate patch ids and duplicate ``s1_name`` values (within or
    across files) are always errors, since two patches sharing a radar key would silently
    overwrite each other.
    """
    files = [Path(metadata)] if isinstance(metadata, (str, Path)) else [Path(m) for m in metadata]
    if not files:
        raise ValueError("no metadata file given")
    by_split = read_metadata_files(files)
    patches = [PatchKeys(rec.patch_id, rec.s1_name) for split in SPLITS for rec in by_split[split]]
    patches.sort(key=lambda p: p.patch_id)
    return patches


def labels_to_multihot(records: Sequence[PatchRecord]) -> np.ndarray:
    """N x 19 uint8 label matrix in the nomenclature's original class order."""
    out = np.zeros((len(records), NUM_CLASSES), dtype=np.uint8)
    for i, rec in enumerate(records):
        out[i, class_indices(rec.labels, where=f"patch {rec.patch_id}")] = 1
    return out


def reference_map_to_class_counts(codes: np.ndarray) -> np.ndarray:
    """Pixel count per reBEN class (length 19) of a CLC-coded map; unlabeled codes are ignored."""
    values, counts = np.unique(codes, return_counts=True)
    out = np.zeros(NUM_CLASSES, dtype=np.int64)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        cls = CLC_TO_CLASS.get(int(v))
        if cls is not None:
            out[cls] += c
    return out


def metadata_schema() -> pa.Schema:
    """The arrow schema of the official metadata.parquet (:data:`~splml.io.reben.format.METADATA_COLUMNS`)."""
    types = {"string": pa.string(), "list<string>": pa.list_(pa.string()), "bool": pa.bool_()}
    return pa.schema([(name, types[t]) for name, t in METADATA_COLUMNS.items()])


def write_metadata(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``metadata.parquet``: one row per patch with every column of the official file, in its schema."""
    columns: dict[str, list[Any]] = {name: [] for name in METADATA_COLUMNS}
    for k, row in enumerate(rows):
        missing = [c for c in METADATA_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"metadata row {k} lacks column(s) {missing}")
        for name in METADATA_COLUMNS:
            columns[name].append(row[name])
    pq.write_table(pa.Table.from_pydict(columns, schema=metadata_schema()), path)
    return Path(path)
