"""Reader for reBEN (BigEarthNet v2.0) LMDB files, real or synthetic.

The same code reads the official encoded LMDB and the embedded synthetic dataset: both follow
``../shared/specs/datasets.md``. The LMDB environment is opened lazily and re-opened in every
process that touches it (an LMDB handle must not cross a ``fork``), so DataLoader workers are
safe with any start method.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import lmdb
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from splml.data.reben_format import (
    BAND_STATS,
    CLASS_NAMES,
    CLC_TO_CLASS,
    METADATA_FILE,
    NUM_CLASSES,
    PATCH_SIZE,
    REFERENCE_MAP_SUFFIX,
    REFERENCE_MAP_TENSOR,
    S1_BANDS,
    S2_BAND_SIZES,
    SNOW_CLOUD_METADATA_FILE,
    SPLITS,
    VALUE_RANGES,
    VALUE_UNITS,
    class_indices,
    resolve_band_set,
    resolve_value_range,
)
from splml.data.sampler import sample_item


class DataFormatError(ValueError):
    """A data file does not follow the expected format; the message names the file and item."""


class TruncatedLMDBError(DataFormatError):
    """``data.mdb`` is shorter than the LMDB's own metadata says: an interrupted copy, or a writer still at work.

    Checked before any read because reading a page past the end of a memory-mapped file is a
    SIGBUS: no exception, the process (a DataLoader worker, a whole Hydra sweep) just dies.
    """


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


def find_lmdb_dir(root: Path) -> Path:
    """Locate the LMDB directory under a dataset root (``root`` itself or a child holding data.mdb)."""
    root = Path(root)
    if (root / "data.mdb").is_file():
        return root
    candidates = sorted(p.parent for p in root.glob("*/data.mdb"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(f"no LMDB found under {root}: expected {root}/data.mdb or {root}/<name>/data.mdb")
    raise FileNotFoundError(
        f"several LMDB directories under {root} ({[str(c) for c in candidates]}); "
        "pass the one to use as dataset.lmdb_path"
    )


def read_metadata(path: Path, *, include_snow_cloud: bool = False) -> dict[str, list[PatchRecord]]:
    """Read metadata.parquet (and optionally the snow/cloud file) grouped by split.

    Raises :class:`DataFormatError` naming the file for a missing column, an unknown split,
    an unknown class name or a duplicate ``patch_id`` / ``s1_name`` (see :func:`read_metadata_files`).
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


#: safetensors dtype names of the arrays a reBEN value may hold.
_SAFETENSORS_DTYPES = {"U8": np.uint8, "U16": np.uint16, "I16": np.int16, "I32": np.int32, "F16": np.float16,
                       "F32": np.float32, "F64": np.float64}  # fmt: skip


def safetensors_views(value: bytes | memoryview) -> dict[str, np.ndarray]:
    """Parse a serialized safetensors dict into read-only numpy views of its bytes (no copy).

    The format: an 8-byte little-endian header length, a JSON header mapping each name to its
    ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), then the raw
    little-endian bytes. Gives the same arrays as ``safetensors.numpy.load(bytes(value))``
    (tested) without copying the value or the arrays; raises ValueError on a malformed value.
    """
    buf = memoryview(value)
    if len(buf) < 8:
        raise ValueError(f"{len(buf)} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(buf[:8], "little")
    if header_len > len(buf) - 8:
        raise ValueError(f"header length {header_len} exceeds the value's {len(buf) - 8} bytes")
    data = buf[8 + header_len :]
    layout = _header_layout(bytes(buf[8 : 8 + header_len]))
    if layout and layout[-1][4] > len(data):
        raise ValueError(f"the header describes {layout[-1][4]} data bytes, the value has {len(data)}")
    return {
        name: np.frombuffer(data[start:end], dtype=dtype).reshape(shape) for name, dtype, shape, start, end in layout
    }


@functools.lru_cache(maxsize=256)
def _header_layout(header_bytes: bytes) -> tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]:
    """(name, dtype, shape, start, end) per tensor, ordered by end offset.

    Cached: every patch of a dataset has the same header (same names, shapes and offsets), so
    the JSON is parsed once per distinct header rather than once per read.
    """
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")  # noqa: TRY004 -- callers catch ValueError for any malformed value
    layout = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor {name!r}: bad header entry {info!r}") from exc
        if not 0 <= start <= end or end - start != dtype.itemsize * math.prod(shape):
            raise ValueError(f"tensor {name!r}: offsets {start}..{end} do not fit dtype {info['dtype']} shape {shape}")
        layout.append((name, dtype, shape, start, end))
    return tuple(sorted(layout, key=lambda t: t[4]))


def value_problem(arr: np.ndarray, bounds: tuple[float, float] | None, modality: str) -> str | None:
    """What is wrong with the values of one band of ``modality`` ("s2"/"s1"), or None.

    Non-finite values, or values outside ``bounds`` (None: only finiteness is checked).
    Shared by the reader (on failure only: the hot path checks a min and a max) and the encoder.
    """
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return f"contains NaN or inf ({_pixels(int((~np.isfinite(arr)).sum()))})"
    if bounds is None or (arr.dtype.kind in "ui" and _covers_dtype(bounds, arr.dtype)):
        return None
    low, high = bounds
    below, above = arr < low, arr > high
    count = int(below.sum() + above.sum())
    if not count:
        return None
    worst = arr[below].min() if below.any() else arr[above].max()
    return (
        f"has value {float(worst):g} outside value_range.{modality} [{low}, {high}] {VALUE_UNITS[modality]} "
        f"({_pixels(count)})"
    )


def _pixels(count: int) -> str:
    return f"{count} pixel{'s' if count != 1 else ''}"


def _covers_dtype(bounds: tuple[float, float] | None, dtype: type) -> bool:
    info = np.iinfo(dtype)
    return bounds is None or (bounds[0] <= info.min and bounds[1] >= info.max)


@dataclass(frozen=True)
class _BandGroup:
    """Bands of one LMDB value with the same native size, read and resized together."""

    names: tuple[str, ...]
    native: int
    positions: slice | np.ndarray  # where they go in the output (a slice when contiguous)
    mean: np.ndarray  # (k, 1, 1) float32
    std: np.ndarray


def _band_groups(bands: Sequence[str], names: Sequence[str], native_size: dict[str, int]) -> list[_BandGroup]:
    groups = []
    for native in sorted({native_size[b] for b in names}, reverse=True):
        members = tuple(b for b in names if native_size[b] == native)
        index = np.array([list(bands).index(b) for b in members])
        contiguous = bool((np.diff(index) == 1).all())
        positions = slice(int(index[0]), int(index[-1]) + 1) if contiguous else index
        mean = np.array([BAND_STATS[b][0] for b in members], dtype=np.float32).reshape(-1, 1, 1)
        std = np.array([BAND_STATS[b][1] for b in members], dtype=np.float32).reshape(-1, 1, 1)
        groups.append(_BandGroup(members, native, positions, mean, std))
    return groups


def _repeat_into(dst: np.ndarray, bands: np.ndarray, factor: int) -> None:
    """Nearest upsampling by an integer ``factor``: ``dst`` (k x S x S) from ``bands`` (k x s x s).

    Rows are repeated with ``np.repeat`` (contiguous row copies); columns by ``factor`` strided
    assignments, which is about 3x faster than repeating along the last axis element by element.
    """
    rows = bands.repeat(factor, axis=1)
    columns = dst.reshape(dst.shape[0], dst.shape[1], bands.shape[2], factor)
    for j in range(factor):
        columns[..., j] = rows


def lmdb_used_bytes(env: lmdb.Environment) -> int:
    """Bytes the database occupies in ``data.mdb`` by its own metadata: pages 0 .. last_pgno.

    Read from the meta pages at the start of the file (so it is safe on a truncated file); the
    file of a complete LMDB is at least this long, and the map itself is sparse and larger.
    """
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def open_reben_lmdb(path: str | Path, *, readonly: bool = True, **options: Any) -> lmdb.Environment:
    """Open the LMDB directory ``path`` (``lmdb.open`` ``options``) after checking that ``data.mdb`` is complete.

    Every reader and writer of the reBEN LMDB opens it through here. A ``data.mdb`` shorter than
    :func:`lmdb_used_bytes` (an interrupted copy or download, or a writer still at work) raises
    :class:`TruncatedLMDBError` naming the file and both sizes; a file too short to hold its own
    header is a :class:`DataFormatError`. A missing ``data.mdb`` is a FileNotFoundError when
    reading; a writer creates it.
    """
    path = Path(path)
    data_file = path / "data.mdb"
    exists = data_file.is_file()
    if readonly and not exists:
        raise FileNotFoundError(f"no LMDB at {path} (expected {data_file})")
    unreadable = f"{data_file} ({data_file.stat().st_size:,} bytes) cannot be opened as an LMDB" if exists else ""
    if exists and data_file.stat().st_size == 0:  # lmdb itself says only "Bad file descriptor"
        raise DataFormatError(f"{unreadable}: it is empty, so truncated or still being written")
    try:
        env = lmdb.open(str(path), readonly=readonly, subdir=True, **options)
    except (lmdb.InvalidError, lmdb.CorruptedError) as exc:  # no valid header: cut inside the meta pages
        raise DataFormatError(
            f"{unreadable} ({exc}): it is truncated or still being written, or not an LMDB file"
        ) from exc
    if exists:
        try:
            _check_complete(env, data_file)
        except Exception:
            env.close()
            raise
    return env


def _check_complete(env: lmdb.Environment, data_file: Path) -> None:
    needed, actual = lmdb_used_bytes(env), data_file.stat().st_size
    if actual < needed:
        raise TruncatedLMDBError(
            f"{data_file} is truncated or still being written: it holds {actual:,} bytes but the LMDB's own "
            f"metadata needs at least {needed:,} bytes ({needed // env.stat()['psize']:,} pages of "
            f"{env.stat()['psize']} bytes). Copy it again or wait for its writer to finish (an encoder output: "
            "delete it and encode again); reading it would kill the process with SIGBUS"
        )


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}
# Bumped by close_lmdb, so that datasets holding a handle fetch a fresh one.
_CLOSED_COUNT = 0


def open_lmdb(path: Path) -> lmdb.Environment:
    """A read-only environment for ``path``, shared by every dataset of this process (checked complete).

    LMDB allows one environment per file per process (the train, validation and test datasets
    share it), and one inherited through ``fork`` is invalid, so the cache is keyed by pid.
    """
    pid = os.getpid()
    key = (pid, str(Path(path).resolve()))
    env = _ENVS.get(key)
    if env is None:
        # Handles inherited through fork must not be used; drop them (py-lmdb also refuses a
        # second handle on a path while the inherited one is registered).
        for stale in [k for k in _ENVS if k[0] != pid]:
            _ENVS.pop(stale).close()
        env = open_reben_lmdb(path, lock=False, readahead=False, meminit=False, max_readers=2048)
        _ENVS[key] = env
    else:
        try:  # the file may have been cut since it was opened (a copy started over it)
            _check_complete(env, Path(path) / "data.mdb")
        except TruncatedLMDBError:
            close_lmdb(path)
            raise
    return env


def close_lmdb(path: Path | None = None) -> None:
    """Close this process's cached environment for ``path`` (all of them when None)."""
    global _CLOSED_COUNT
    target = str(Path(path).resolve()) if path is not None else None
    for key in [k for k in _ENVS if k[0] == os.getpid() and (target is None or k[1] == target)]:
        _ENVS.pop(key).close()
    _CLOSED_COUNT += 1


class ReBENDataset(torch.utils.data.Dataset):
    """One split of reBEN: multispectral patches with their full and observed labels.

    Each item is a dict following the batch contract of :mod:`splml.losses.base`:
    ``image`` (C x S x S float32, normalised with the official statistics), ``target`` (full
    labels), ``observed`` (the simulated or annotated labels; full labels if none are set),
    ``index`` (position in this split) and, when a spatial transform is set, ``aug``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        bands: str | Sequence[str] = "all",
        image_size: int = PATCH_SIZE,
        upsampling: str = "nearest",
        normalize: bool = True,
        include_snow_cloud: bool = False,
        lmdb_path: str | Path | None = None,
        metadata_path: str | Path | None = None,
        transform: Any = None,
        records: Sequence[PatchRecord] | None = None,
        value_range: dict[str, Sequence[float] | None] | None = VALUE_RANGES,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; reBEN splits are {SPLITS} (note: 'validation', not 'val')")
        if upsampling not in ("nearest", "bilinear"):
            raise ValueError(f"upsampling must be 'nearest' or 'bilinear', got {upsampling!r}")
        self.root = Path(root)
        self.split = split
        self.bands = resolve_band_set(bands)
        self.image_size = int(image_size)
        self.upsampling = upsampling
        self.normalize = normalize
        self.transform = transform
        self.lmdb_path = Path(lmdb_path) if lmdb_path else find_lmdb_dir(self.root)
        self.metadata_path = Path(metadata_path) if metadata_path else self.root / METADATA_FILE
        if records is None:
            records = read_metadata(self.metadata_path, include_snow_cloud=include_snow_cloud)[split]
        self.records: list[PatchRecord] = list(records)
        if not self.records:
            raise DataFormatError(f"{self.metadata_path}: split {split!r} has no patches")
        self.targets = labels_to_multihot(self.records)
        self.observed: np.ndarray = self.targets.astype(np.float32)
        self._s2_bands = [b for b in self.bands if b in S2_BAND_SIZES]
        self._s1_bands = [b for b in self.bands if b in S1_BANDS]
        native_size = {**S2_BAND_SIZES, **dict.fromkeys(S1_BANDS, PATCH_SIZE)}
        self._s2_groups = _band_groups(self.bands, self._s2_bands, native_size)
        self._s1_groups = _band_groups(self.bands, self._s1_bands, native_size)
        self.value_range = resolve_value_range(value_range)
        # S2 values are uint16: a range covering all of uint16 needs no check on the hot path.
        self._bounds = {
            "s2": None if _covers_dtype(self.value_range["s2"], np.uint16) else self.value_range["s2"],
            "s1": self.value_range["s1"],
        }
        self._env_handle: lmdb.Environment | None = None
        self._env_owner: tuple[int, int] | None = None
        # Fail now, naming the file, if data.mdb is truncated (the handle is cached per process,
        # not kept in the dataset, so the dataset still pickles for spawned workers).
        open_lmdb(self.lmdb_path)

    # -- LMDB access -------------------------------------------------------------------------
    def _decode(self, key: str) -> dict[str, np.ndarray]:
        """Every array of one value, as copies (for callers that keep them)."""
        with self._env().begin(buffers=True) as txn:
            return {name: arr.copy() for name, arr in self._decode_views(txn, key).items()}

    def _decode_views(self, txn: lmdb.Transaction, key: str) -> dict[str, np.ndarray]:
        """The arrays of one value as read-only views into the LMDB page (valid while ``txn`` is open)."""
        value = txn.get(key.encode("utf-8"))
        if value is None:
            raise KeyError(f"{self.lmdb_path}: key {key!r} not found in the LMDB")
        try:
            return safetensors_views(value)
        except ValueError as exc:
            raise DataFormatError(
                f"{self.lmdb_path}: value of key {key!r} is not a valid safetensors dict ({exc})"
            ) from exc

    def read_reference_map(self, i: int) -> np.ndarray:
        """The 120 x 120 CLC-coded reference map of patch ``i`` (uint16)."""
        key = self.records[i].patch_id + REFERENCE_MAP_SUFFIX
        arrays = self._decode(key)
        if REFERENCE_MAP_TENSOR not in arrays:
            raise DataFormatError(
                f"{self.lmdb_path}: reference map {key!r} has no {REFERENCE_MAP_TENSOR!r} array "
                f"(found {sorted(arrays)})"
            )
        data = arrays[REFERENCE_MAP_TENSOR]
        if data.shape != (PATCH_SIZE, PATCH_SIZE):
            raise DataFormatError(f"{self.lmdb_path}: reference map {key!r} has shape {data.shape}")
        return data

    def read_bands(self, i: int, normalize: bool = False) -> torch.Tensor:
        """Decode, upsample and stack the selected bands of patch ``i`` (C x S x S float32).

        Raw units, or normalised with the official statistics when ``normalize``. Bands are read
        as views of the LMDB page (no copy of the value) and handled per native size: stacked,
        normalised at their native resolution, before resizing (nearest, bilinear and area
        resizing average with weights that sum to 1, so they commute with the per-band affine
        normalisation, and a 60 x 60 band costs a quarter of the arithmetic), then resized:
        integer-factor nearest upsampling is a ``repeat``, any other resize one ``interpolate``.
        """
        rec = self.records[i]
        size = self.image_size
        out = np.empty((len(self.bands), size, size), dtype=np.float32)
        with self._env().begin(buffers=True) as txn:
            for key, dtype, groups, modality in (
                (rec.patch_id, np.uint16, self._s2_groups, "s2"),
                (rec.s1_name, np.float32, self._s1_groups, "s1"),
            ):
                if not groups:
                    continue
                arrays = self._checked(key, self._decode_views(txn, key), [b for g in groups for b in g.names], dtype)
                bounds = self._bounds[modality]
                for g in groups:
                    stack = np.stack([arrays[b] for b in g.names])
                    # One min and one max per band group (NaN fails both comparisons, inf one).
                    if bounds is not None:
                        if not bounds[0] <= stack.min() or not stack.max() <= bounds[1]:
                            self._raise_bad_values(rec, key, modality, arrays, g.names)
                    elif stack.dtype.kind == "f" and not np.isfinite(stack).all():
                        self._raise_bad_values(rec, key, modality, arrays, g.names)
                    direct = isinstance(g.positions, slice)
                    dst = out[g.positions] if direct else np.empty((len(g.names), size, size), np.float32)
                    if normalize:
                        if g.native == size:  # cast, shift and scale straight into the output
                            stack = np.subtract(stack, g.mean, out=dst, dtype=np.float32, casting="unsafe")
                        else:
                            stack = np.subtract(stack, g.mean, dtype=np.float32)
                        stack /= g.std
                    if g.native == size:
                        if stack is not dst:
                            dst[...] = stack
                    elif self.upsampling == "nearest" and size % g.native == 0:
                        _repeat_into(dst, stack, size // g.native)
                    else:
                        mode = self.upsampling if g.native < size else "area"
                        kwargs = {"align_corners": False} if mode == "bilinear" else {}
                        x = torch.from_numpy(stack.astype(np.float32, copy=False))[None]
                        dst[...] = F.interpolate(x, size=(size, size), mode=mode, **kwargs)[0].numpy()
                    if not direct:
                        out[g.positions] = dst
        return torch.from_numpy(out)

    def _env(self) -> lmdb.Environment:
        # open_lmdb resolves the path on every call; remember this process's handle instead.
        owner = (os.getpid(), _CLOSED_COUNT)
        if self._env_owner != owner or self._env_handle is None:
            self._env_handle, self._env_owner = open_lmdb(self.lmdb_path), owner
        return self._env_handle

    def _checked(self, key: str, arrays: dict[str, np.ndarray], bands: list[str], dtype: type) -> dict[str, np.ndarray]:
        out = {}
        for b in bands:
            if b not in arrays:
                raise DataFormatError(f"{self.lmdb_path}: patch {key!r} has no band {b!r} (found {sorted(arrays)})")
            arr = arrays[b]
            expected = S2_BAND_SIZES.get(b, PATCH_SIZE)
            if arr.shape != (expected, expected) or arr.dtype != dtype:
                raise DataFormatError(
                    f"{self.lmdb_path}: patch {key!r}, band {b}: expected {np.dtype(dtype).name} "
                    f"{expected}x{expected}, got {arr.dtype} {arr.shape}"
                )
            out[b] = arr
        return out

    def _raise_bad_values(
        self, rec: PatchRecord, key: str, modality: str, arrays: dict[str, np.ndarray], bands: Sequence[str]
    ) -> NoReturn:
        """Name the first band of ``bands`` with a non-finite or out-of-range value (called on failure only)."""
        for b in bands:
            problem = value_problem(arrays[b], self._bounds[modality], modality)
            if problem is not None:
                where = f"patch {key!r}" if key == rec.patch_id else f"patch {rec.patch_id} (key {key!r})"
                hint = (
                    f"; if such values are real, widen dataset.datamodule.value_range.{modality} "
                    "(or set it to null to skip the check)"
                    if np.isfinite(arrays[b]).all()  # finite values failed: they lie outside the range
                    else ""
                )
                raise DataFormatError(f"{self.lmdb_path}: {where}, band {b} {problem}{hint}")
        raise DataFormatError(  # the group check failed, so some band must have: never read on silently
            f"{self.lmdb_path}: patch {rec.patch_id} (key {key!r}): bands {list(bands)} failed the value check"
        )

    # -- Dataset protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        # The sampler yields (index, augmentation seed, padded); plain indices also work.
        return sample_item(
            key, lambda i: self.read_bands(i, normalize=self.normalize), self.targets, self.observed, self.transform
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def display_image(self, i: int) -> np.ndarray:
        """Patch ``i`` as an ``H x W x 3`` uint8 picture (true colour with a percentile stretch; figures only)."""
        from splml.data.display import multispectral_rgb

        return multispectral_rgb(self.read_bands(i, normalize=False).numpy(), self.bands)

    def set_observed(self, observed: np.ndarray) -> None:
        """Install observed labels (N x 19, values in {-1, 0, 1}); validated against the split size."""
        observed = np.asarray(observed, dtype=np.float32)
        if observed.shape != self.targets.shape:
            raise ValueError(
                f"observed labels have shape {observed.shape}, expected {self.targets.shape} "
                f"for split {self.split!r} of {self.metadata_path}"
            )
        bad = ~np.isin(observed, (-1.0, 0.0, 1.0))
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise ValueError(
                f"observed labels must be -1, 0 or 1; row {row} (patch {self.records[row].patch_id}) "
                f"has {observed[row].tolist()}"
            )
        self.observed = observed
