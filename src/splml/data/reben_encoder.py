"""Encode the reBEN (BigEarthNet v2.0) GeoTIFF archive into the LMDB that :mod:`splml.data.reben` reads.

Why a project encoder: the reader is written against ``shared/specs/datasets.md`` and must be
fed files in exactly that format; encoding ourselves from the GeoTIFF release (instead of
trusting a pre-encoded LMDB of unknown provenance) means every byte the models see can be
traced back to a source file, and every problem in the sources is reported by name.

Layout read (the official release):

* ``BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif``: 12 bands (no B10), uint16, at
  their native size (120, 60 or 20 pixels);
* ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_VV.tif`` and ``_VH.tif``: float32 dB, 120 x 120;
* optionally ``Reference_Maps/<tile>/<patch_id>/<patch_id>_reference_map.tif``: uint16 CLC codes.

``metadata.parquet`` decides which patches are encoded (and gives the ``s1_name`` of each).
Patch folders are found by scanning two directory levels, so the name of the tile/product
folder does not matter; a folder that the metadata does not mention is reported as "not in
metadata" and not encoded (the official archive also holds the snow/cloud patches, which live
in a separate metadata file: pass both files to encode those too).

Reliability rules: every problem (missing folder or band file, unreadable or truncated TIFF,
wrong shape or dtype, NaN/inf or a value outside ``value_range``, invalid CLC code) is an
:class:`EncodeError` naming the file and patch, unless ``skip_bad`` is set, in which case the patch is logged, counted,
left out and listed in ``<out>/skipped_patches.csv``. Nothing is ever dropped silently.

Re-running on an existing output resumes: keys already present are decoded and checked
(tensor names, shapes, dtypes, value ranges, map codes) and kept; a random sample of them
(``compare_source`` patches, or all) is also compared byte for byte with the source rasters;
missing, corrupt or mismatching patches are (re-)encoded. :func:`verify_reben` runs the
structural check on every key without touching the sources.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Final, Literal

import lmdb
import numpy as np
import safetensors.numpy

from splml.data.reben import DataFormatError, lmdb_used_bytes, open_reben_lmdb, read_metadata_files, value_problem
from splml.data.reben_format import (
    CLC_TO_CLASS,
    PATCH_SIZE,
    REFERENCE_MAP_SUFFIX,
    REFERENCE_MAP_TENSOR,
    S1_BANDS,
    S2_BAND_SIZES,
    SPLITS,
    UNLABELED_CLC,
    VALUE_RANGES,
    resolve_value_range,
)

log = logging.getLogger(__name__)

#: Written into the output folder when ``skip_bad`` is set: one row per patch left out.
SKIPPED_FILE: Final[str] = "skipped_patches.csv"
#: Written into the output folder when some source folders have no metadata row.
NOT_IN_METADATA_FILE: Final[str] = "not_in_metadata.csv"
#: Every CLC code a reference map may legitimately contain.
VALID_CLC_CODES: Final[np.ndarray] = np.array(sorted(set(CLC_TO_CLASS) | set(UNLABELED_CLC)), dtype=np.int64)
#: Raw bytes of one patch's values (S2 + S1 + map); the safetensors headers add a few hundred.
_S2_BYTES: Final[int] = sum(2 * s * s for s in S2_BAND_SIZES.values())
_S1_BYTES: Final[int] = 4 * PATCH_SIZE * PATCH_SIZE * len(S1_BANDS)
_MAP_BYTES: Final[int] = 2 * PATCH_SIZE * PATCH_SIZE
_MIN_MAP_SIZE: Final[int] = 64 << 20
#: GDAL must not list each patch folder looking for sidecar files: it costs a readdir per TIFF.
_GDAL_OPTIONS: Final[dict[str, str]] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}

KeyKind = Literal["s2", "s1", "map"]


class EncodeError(DataFormatError):
    """A source file or the metadata is unusable; the message names the file and the patch."""


class _BadSource(Exception):
    """Internal: one patch's sources are unusable (``reason`` names the file)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class EncodeSummary:
    """What one :func:`encode_reben` call did; ``line()`` is the summary the script prints."""

    out: Path
    total: int = 0
    #: Patches written by this call (new ones plus ``repaired``).
    encoded: int = 0
    #: Patches already present whose keys decoded and checked fine: left as they were.
    skipped: int = 0
    #: Patches present but corrupt, incomplete or different from their sources: re-encoded.
    repaired: int = 0
    #: Present patches compared byte for byte with their source rasters.
    compared: int = 0
    #: ``(patch_id, reason)`` of patches left out under ``skip_bad``.
    bad: list[tuple[str, str]] = field(default_factory=list)
    #: ``(source, folder)`` of patch folders without a metadata row (not encoded).
    not_in_metadata: list[tuple[str, str]] = field(default_factory=list)
    lmdb_bytes: int = 0
    seconds: float = 0.0

    @property
    def patches_per_s(self) -> float:
        """Patches processed (encoded, checked or rejected) per second of wall time."""
        done = self.encoded + self.skipped + len(self.bad)
        return done / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        repaired = f" ({self.repaired} repaired)" if self.repaired else ""
        return (
            f"{self.out}: {self.total} patches in metadata: encoded {self.encoded}{repaired}, "
            f"skipped {self.skipped} already present (verified; {self.compared} compared with the sources), "
            f"bad {len(self.bad)}, folders not in metadata {len(self.not_in_metadata)}; "
            f"LMDB {self.lmdb_bytes / 2**20:.1f} MiB; {self.seconds:.1f} s, {self.patches_per_s:.1f} patches/s"
        )


@dataclass
class VerifySummary:
    """What :func:`verify_reben` found; ``problems`` are ``(key, reason)`` pairs."""

    out: Path
    patches: int = 0
    keys_checked: int = 0
    maps_checked: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Keys in the LMDB that no metadata row refers to (informational: e.g. snow/cloud patches).
    unreferenced_keys: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        maps = "with reference maps" if self.maps_checked else "no reference maps"
        status = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        return (
            f"{self.out}: verified {self.keys_checked} keys of {self.patches} patches ({maps}): {status}; "
            f"{self.unreferenced_keys} keys not referenced by the metadata; {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------
# Metadata and source discovery
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchKeys:
    """The LMDB keys of one patch, in the reader's naming."""

    patch_id: str
    s1_name: str

    @property
    def map_key(self) -> str:
        return self.patch_id + REFERENCE_MAP_SUFFIX

    def keys(self, with_maps: bool) -> list[tuple[str, KeyKind]]:
        keys: list[tuple[str, KeyKind]] = [(self.patch_id, "s2"), (self.s1_name, "s1")]
        if with_maps:
            keys.append((self.map_key, "map"))
        return keys


def load_patch_list(metadata: Path | Sequence[Path]) -> list[PatchKeys]:
    """Patches of one or more metadata files, sorted by patch id (the LMDB key order).

    Uses the reader's own :func:`read_metadata_files`, so the encoder refuses exactly what the
    reader would refuse: duplicate patch ids and duplicate ``s1_name`` values (within or across
    files) are always errors, even with ``skip_bad``, since two patches sharing a radar key
    would silently overwrite each other.
    """
    files = [Path(metadata)] if isinstance(metadata, (str, Path)) else [Path(m) for m in metadata]
    if not files:
        raise ValueError("no metadata file given")
    by_split = read_metadata_files(files)
    patches = [PatchKeys(rec.patch_id, rec.s1_name) for split in SPLITS for rec in by_split[split]]
    patches.sort(key=lambda p: p.patch_id)
    return patches


def scan_patch_folders(root: Path, wanted: set[str], source: str) -> tuple[dict[str, Path], list[Path]]:
    """Find ``root/<group>/<name>/`` folders: ``(wanted name -> folder, folders not wanted)``.

    Scanning (rather than guessing the group folder from the name) works whatever the
    tile/product folder is called. A wanted name found in two groups is an error: which
    copy is right cannot be decided.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{source} root {root} does not exist or is not a folder")
    found: dict[str, Path] = {}
    unwanted: list[Path] = []
    with os.scandir(root) as groups:
        group_dirs = sorted(g.path for g in groups if g.is_dir())
    for group in group_dirs:
        with os.scandir(group) as entries:
            for entry in entries:
                if not entry.is_dir():
                    continue
                if entry.name not in wanted:
                    unwanted.append(Path(entry.path))
                elif entry.name in found:
                    raise EncodeError(
                        f"{source}: patch folder {entry.name} exists twice: {found[entry.name]} and {entry.path}"
                    )
                else:
                    found[entry.name] = Path(entry.path)
    return found, sorted(unwanted)


# --------------------------------------------------------------------------------------------
# Reading sources (runs in worker processes when workers > 1)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sources:
    """The source roots and the patch folders found under them."""

    s2_root: Path
    s1_root: Path
    maps_root: Path | None
    s2_dirs: dict[str, Path]
    s1_dirs: dict[str, Path]
    map_dirs: dict[str, Path]
    value_range: dict[str, tuple[float, float] | None]

    def task(self, p: PatchKeys) -> _Task:
        return _Task(
            p, self.s2_dirs.get(p.patch_id), self.s1_dirs.get(p.s1_name), self.map_dirs.get(p.patch_id),
            self.s2_root, self.s1_root, self.maps_root, self.value_range,
        )  # fmt: skip


@dataclass(frozen=True)
class _Task:
    """Everything a reader process needs to read one patch."""

    keys: PatchKeys
    s2_dir: Path | None
    s1_dir: Path | None
    map_dir: Path | None
    s2_root: Path
    s1_root: Path
    maps_root: Path | None
    value_range: dict[str, tuple[float, float] | None]


def _read_raster(path: Path, size: int, dtype: type) -> np.ndarray:
    """One single-band raster, checked for band count, size and dtype (raises _BadSource).

    Opening is the dominant cost of the encoder, so the file is not stat-ed first: a missing
    file is recognised after the open fails.
    """
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise _BadSource(f"{path}: {src.count} bands in the file, expected 1")
            arr = src.read(1)
    except _BadSource:
        raise
    except Exception as exc:  # GDAL raises several types for broken files
        if not path.is_file():
            raise _BadSource(f"missing file {path}") from None
        raise _BadSource(f"unreadable TIFF {path}: {exc}") from exc
    if arr.shape != (size, size) or arr.dtype != dtype:
        raise _BadSource(
            f"{path}: expected {np.dtype(dtype).name} {size}x{size}, got {arr.dtype.name} {arr.shape[0]}x{arr.shape[1]}"
        )
    return np.ascontiguousarray(arr)


def _read_sources(task: _Task) -> dict[str, dict[str, np.ndarray]]:
    """Every value of one patch as ``{lmdb key: {tensor name: array}}`` (raises _BadSource)."""
    pid, s1 = task.keys.patch_id, task.keys.s1_name
    if task.s2_dir is None:
        raise _BadSource(f"no Sentinel-2 folder {pid} under {task.s2_root}/<tile>/")
    if task.s1_dir is None:
        raise _BadSource(f"no Sentinel-1 folder {s1} under {task.s1_root}/<product>/")
    values: dict[str, dict[str, np.ndarray]] = {}
    for key, folder, modality, bands in (
        (pid, task.s2_dir, "s2", [(b, size, np.uint16) for b, size in S2_BAND_SIZES.items()]),
        (s1, task.s1_dir, "s1", [(b, PATCH_SIZE, np.float32) for b in S1_BANDS]),
    ):
        values[key] = {}
        for b, size, dtype in bands:
            path = folder / f"{key}_{b}.tif"
            arr = values[key][b] = _read_raster(path, size, dtype)
            if problem := value_problem(arr, task.value_range[modality], modality):
                raise _BadSource(f"{path}: {problem}")
    if task.maps_root is not None:
        if task.map_dir is None:
            raise _BadSource(f"no reference-map folder {pid} under {task.maps_root}/<tile>/")
        path = task.map_dir / f"{pid}{REFERENCE_MAP_SUFFIX}.tif"
        codes = _read_raster(path, PATCH_SIZE, np.uint16)
        invalid = np.setdiff1d(np.unique(codes), VALID_CLC_CODES)
        if invalid.size:
            raise _BadSource(f"{path}: values {invalid[:10].tolist()} are not CORINE level-3 codes")
        values[task.keys.map_key] = {REFERENCE_MAP_TENSOR: codes}
    return values


_Result = tuple[dict[str, dict[str, np.ndarray]] | None, str | None]


def _read_chunk(tasks: list[_Task]) -> list[_Result]:
    """Read several patches in one GDAL environment: ``(values, None)`` or ``(None, reason)`` each."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    out: list[_Result] = []
    with rasterio.Env(**_GDAL_OPTIONS), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the pixels are all the LMDB keeps
        for task in tasks:
            try:
                out.append((_read_sources(task), None))
            except _BadSource as bad:
                out.append((None, str(bad)))
    return out


def _read_all(tasks: list[_Task], pool: Executor | None, workers: int) -> list[_Result]:
    if pool is None or len(tasks) < 2:
        return _read_chunk(tasks)
    size = max(1, math.ceil(len(tasks) / (4 * workers)))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    return [r for part in pool.map(_read_chunk, chunks) for r in part]


# --------------------------------------------------------------------------------------------
# Checking encoded values (shared by resume and verify)
# --------------------------------------------------------------------------------------------
def _expected_tensors(kind: KeyKind) -> dict[str, tuple[int, type]]:
    if kind == "s2":
        return {b: (s, np.uint16) for b, s in S2_BAND_SIZES.items()}
    if kind == "s1":
        return {b: (PATCH_SIZE, np.float32) for b in S1_BANDS}
    return {REFERENCE_MAP_TENSOR: (PATCH_SIZE, np.uint16)}


def check_value(
    kind: KeyKind, value: bytes | None, value_range: dict[str, tuple[float, float] | None] = VALUE_RANGES
) -> str | None:
    """Decode one LMDB value and check it the way the reader will use it; the problem or None.

    Checks what can be checked without the sources: a valid safetensors dict with exactly the
    expected tensor names, each of the right shape and dtype, band values finite and inside
    ``value_range`` (resolved, as from :func:`resolve_value_range`), map codes valid. A flipped
    pixel value inside a well-formed value cannot be seen here: that is what the comparison
    with the sources is for.
    """
    if value is None:
        return "missing key"
    try:
        arrays = safetensors.numpy.load(bytes(value))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt bytes
        return f"not a valid safetensors value ({exc})"
    expected = _expected_tensors(kind)
    if set(arrays) != set(expected):
        return f"tensors {sorted(arrays)}, expected {sorted(expected)}"
    for name, (size, dtype) in expected.items():
        arr = arrays[name]
        if arr.shape != (size, size) or arr.dtype != dtype:
            return f"tensor {name}: expected {np.dtype(dtype).name} {size}x{size}, got {arr.dtype.name} {arr.shape}"
        if kind != "map" and (problem := value_problem(arr, value_range[kind], kind)):
            return f"tensor {name} {problem}"
    if kind == "map":
        invalid = np.setdiff1d(np.unique(arrays[REFERENCE_MAP_TENSOR]), VALID_CLC_CODES)
        if invalid.size:
            return f"map values {invalid[:10].tolist()} are not CORINE level-3 codes"
    return None


def _same_as_source(value: bytes, source: dict[str, np.ndarray]) -> bool:
    arrays = safetensors.numpy.load(bytes(value))
    return set(arrays) == set(source) and all(
        arrays[k].dtype == v.dtype and arrays[k].shape == v.shape and arrays[k].tobytes() == v.tobytes()
        for k, v in source.items()
    )


# --------------------------------------------------------------------------------------------
# LMDB helpers
# --------------------------------------------------------------------------------------------
def _put_batch(env: lmdb.Environment, entries: list[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()) -> None:
    """Write one sorted batch in a single transaction, doubling the map size while it is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key in deletes:
                    txn.delete(key)
                for key, value in entries:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            new_size = env.info()["map_size"] * 2
            log.info("LMDB map full: growing it to %.1f GiB", new_size / 2**30)
            env.set_mapsize(new_size)


def _batches(items: Sequence[PatchKeys], size: int) -> Iterator[Sequence[PatchKeys]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def encode_reben(
    s2_root: str | Path,
    s1_root: str | Path,
    metadata: str | Path | Sequence[str | Path],
    out: str | Path,
    maps_root: str | Path | None = None,
    batch_size: int = 512,
    skip_bad: bool = False,
    progress: bool = True,
    *,
    workers: int = 1,
    compare_source: int | Literal["all"] = 32,
    map_size: int | None = None,
    seed: int = 0,
    value_range: Mapping[str, Sequence[float] | None] | None = VALUE_RANGES,
) -> EncodeSummary:
    """Encode (or resume encoding) the GeoTIFF patches listed in ``metadata`` into the LMDB ``out``.

    ``workers`` > 1 reads the TIFFs in that many forked processes (the single writer stays in
    this process). ``compare_source`` sets how many already-present patches (a random sample
    drawn with ``seed``; ``"all"`` for every one) are compared byte for byte with their
    sources on resume; all present patches are always decoded and checked. ``map_size`` is the
    initial LMDB map size (default: estimated from the patch count; it doubles whenever full).
    ``value_range`` sets the accepted band values per modality, as the reader's option of that
    name (a source band with a value outside is a bad patch). Raises :class:`EncodeError` on the
    first bad patch unless ``skip_bad``.
    """
    start = time.perf_counter()
    out = Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if compare_source != "all" and (not isinstance(compare_source, int) or compare_source < 0):
        raise ValueError(f"compare_source must be a non-negative int or 'all', got {compare_source!r}")
    with_maps = maps_root is not None
    ranges = resolve_value_range(value_range)
    patches = load_patch_list(metadata)
    summary = EncodeSummary(out=out, total=len(patches))

    ids = {p.patch_id for p in patches}
    s2_dirs, s2_extra = scan_patch_folders(Path(s2_root), ids, "S2")
    s1_dirs, s1_extra = scan_patch_folders(Path(s1_root), {p.s1_name for p in patches}, "S1")
    map_dirs: dict[str, Path] = {}
    if maps_root is not None:
        map_dirs, map_extra = scan_patch_folders(Path(maps_root), ids, "reference maps")
    else:
        map_extra = []
    summary.not_in_metadata = [
        (source, str(path)) for source, extra in (("S2", s2_extra), ("S1", s1_extra), ("maps", map_extra))
        for path in extra
    ]  # fmt: skip
    if summary.not_in_metadata:
        log.warning(
            "%d source folder(s) have no metadata row and are not encoded (first: %s); listed in %s",
            len(summary.not_in_metadata), summary.not_in_metadata[0][1], out / NOT_IN_METADATA_FILE,
        )  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / SKIPPED_FILE, out / NOT_IN_METADATA_FILE):
        stale.unlink(missing_ok=True)  # a file from an earlier run would describe another state
    if summary.not_in_metadata:
        _write_csv(out / NOT_IN_METADATA_FILE, ("source", "folder"), summary.not_in_metadata)

    per_patch = _S2_BYTES + _S1_BYTES + (_MAP_BYTES if with_maps else 0) + 3 * 4096
    initial = map_size if map_size is not None else max(_MIN_MAP_SIZE, int(len(patches) * per_patch * 1.1))
    sources = _Sources(
        Path(s2_root), Path(s1_root), Path(maps_root) if maps_root is not None else None,
        s2_dirs, s1_dirs, map_dirs, ranges,
    )  # fmt: skip
    with ExitStack() as cleanup:
        pool = None
        if workers > 1:
            # Fork the readers before the LMDB environment exists: a child must never inherit it
            # (a fork pool starts all its processes at its first task).
            pool = cleanup.enter_context(ProcessPoolExecutor(workers, mp_context=get_context("fork")))
            pool.submit(os.getpid).result()
        env = open_reben_lmdb(out, readonly=False, map_size=initial, readahead=False, max_dbs=0)
        cleanup.callback(env.close)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = cleanup.enter_context(tqdm(total=len(patches), unit="patch", desc="encode reBEN", dynamic_ncols=True))
        present = _present_patches(env, patches, with_maps)
        if compare_source == "all":
            to_compare = set(present)
        else:
            rng = np.random.default_rng(seed)
            chosen = rng.choice(len(present), size=min(compare_source, len(present)), replace=False)
            to_compare = {present[i] for i in chosen.tolist()}
        present_set = set(present)
        for batch in _batches(patches, batch_size):
            _encode_batch(
                env, batch, summary, pool=pool, workers=workers, with_maps=with_maps, present=present_set,
                to_compare=to_compare, sources=sources, skip_bad=skip_bad,
            )  # fmt: skip
            if bar is not None:
                bar.update(len(batch))
        summary.lmdb_bytes = lmdb_used_bytes(env)
    if skip_bad:
        _write_csv(out / SKIPPED_FILE, ("patch_id", "reason"), summary.bad)
    summary.seconds = time.perf_counter() - start
    return summary


def _present_patches(env: lmdb.Environment, patches: Sequence[PatchKeys], with_maps: bool) -> list[str]:
    """Patch ids whose keys all exist (a cheap existence test; the values are checked later)."""
    present = []
    with env.begin(buffers=True) as txn:
        for p in patches:
            if all(txn.get(key.encode()) is not None for key, _ in p.keys(with_maps)):
                present.append(p.patch_id)
    return present


def _encode_batch(
    env: lmdb.Environment,
    batch: Sequence[PatchKeys],
    summary: EncodeSummary,
    *,
    pool: Executor | None,
    workers: int,
    with_maps: bool,
    present: set[str],
    to_compare: set[str],
    sources: _Sources,
    skip_bad: bool,
) -> None:
    """Check the present patches of one batch, read the sources it needs, write one transaction."""
    repair: set[str] = set()
    kept: dict[str, dict[str, bytes]] = {}  # present, structurally fine; values kept for the source comparison
    with env.begin(buffers=False) as txn:
        for p in batch:
            if p.patch_id not in present:
                continue
            values = {key: txn.get(key.encode()) for key, _ in p.keys(with_maps)}
            problems = [
                f"{key}: {why}"
                for key, kind in p.keys(with_maps)
                if (why := check_value(kind, values[key], sources.value_range))
            ]
            if problems:
                log.warning("patch %s is corrupt in the LMDB (%s): re-encoding it", p.patch_id, "; ".join(problems))
                repair.add(p.patch_id)
            elif p.patch_id in to_compare:
                kept[p.patch_id] = values  # type: ignore[assignment]
            else:
                summary.skipped += 1
    tasks = [sources.task(p) for p in batch if p.patch_id not in present or p.patch_id in repair or p.patch_id in kept]
    entries: list[tuple[bytes, bytes]] = []
    deletes: list[bytes] = []
    for task, (arrays, reason) in zip(tasks, _read_all(tasks, pool, workers), strict=True):
        pid = task.keys.patch_id
        if arrays is None:
            if pid in kept:
                reason = f"{reason} (found while comparing; its LMDB values passed the checks and are kept)"
            elif pid in repair:
                # A missing key is a clearer state than a corrupt one for whoever reads the LMDB next.
                reason = f"{reason} (its corrupt LMDB values were deleted)"
                deletes.extend(key.encode() for key, _ in task.keys.keys(with_maps))
            if not skip_bad:
                raise EncodeError(f"patch {pid}: {reason}")
            log.warning("skipping bad patch %s: %s", pid, reason)
            summary.bad.append((pid, str(reason)))
            continue
        if pid in kept:
            summary.compared += 1
            if all(_same_as_source(kept[pid][key], arrays[key]) for key in arrays):
                summary.skipped += 1
                continue
            log.warning("patch %s differs from its source rasters: re-encoding it", pid)
            repair.add(pid)
        if pid in repair:
            summary.repaired += 1
        summary.encoded += 1
        entries.extend((key.encode(), safetensors.numpy.save(tensors)) for key, tensors in arrays.items())
    if entries or deletes:
        entries.sort()
        _put_batch(env, entries, deletes)


def verify_reben(
    out: str | Path,
    metadata: str | Path | Sequence[str | Path],
    *,
    expect_maps: bool | None = None,
    progress: bool = True,
    value_range: Mapping[str, Sequence[float] | None] | None = VALUE_RANGES,
) -> VerifySummary:
    """Decode and check every key of every metadata patch in the LMDB ``out``.

    ``expect_maps=None`` expects reference maps for every patch as soon as one patch has one
    (a half-mapped LMDB is a problem either way); True requires them, False ignores them.
    Band values outside ``value_range`` (as the reader's option) are problems. A truncated
    ``data.mdb`` raises :class:`~splml.data.reben.TruncatedLMDBError` before anything is read.
    """
    start = time.perf_counter()
    out = Path(out)
    ranges = resolve_value_range(value_range)
    env = open_reben_lmdb(out, lock=False, readahead=False)  # refuses a truncated file before any read
    bar = None
    try:
        patches = load_patch_list(metadata)
        summary = VerifySummary(out=out, patches=len(patches))
        missing_maps: list[str] = []
        any_map = False
        found = 0  # referenced keys that exist (the rest of the LMDB's entries are unreferenced)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(patches), unit="patch", desc="verify reBEN", dynamic_ncols=True)
        with env.begin(buffers=True) as txn:
            for p in patches:
                for key, kind in p.keys(with_maps=expect_maps is not False):
                    value = txn.get(key.encode())
                    found += value is not None
                    if kind == "map":
                        if value is None and expect_maps is None:
                            missing_maps.append(key)
                            continue
                        any_map = any_map or value is not None
                    summary.keys_checked += 1
                    problem = check_value(kind, value, ranges)
                    if problem:
                        summary.problems.append((key, f"patch {p.patch_id}: {problem}"))
                if bar is not None:
                    bar.update(1)
        entries = env.stat()["entries"]
    finally:
        env.close()
        if bar is not None:
            bar.close()
    summary.maps_checked = bool(expect_maps) or any_map
    if summary.maps_checked:
        summary.problems.extend(
            (key, f"patch {key.removesuffix(REFERENCE_MAP_SUFFIX)}: missing key (other patches have maps)")
            for key in missing_maps
        )
    summary.unreferenced_keys = entries - found
    summary.seconds = time.perf_counter() - start
    return summary


# --------------------------------------------------------------------------------------------
# The inverse direction, for tests and benchmarks
# --------------------------------------------------------------------------------------------
def export_geotiff_tree(
    lmdb_dir: str | Path,
    metadata: str | Path,
    s2_root: str | Path,
    s1_root: str | Path,
    maps_root: str | Path | None = None,
    patch_ids: Sequence[str] | None = None,
) -> int:
    """Write LMDB patches back as GeoTIFFs in the official folder layout; returns the patch count.

    Exists so that tests and the encoder benchmark can build a realistic source tree from the
    synthetic dataset (which only exists as an LMDB) and check that encoding it gives the same
    bytes back. Tile and product folders are derived the way the official names are built
    (patch id minus the ``_<x>_<y>`` suffix; S1 name minus ``_<tile>_<x>_<y>``); rasters get a
    plausible UTM georeference because the real files have one.
    """
    import rasterio
    from affine import Affine

    lmdb_dir = Path(lmdb_dir)
    patches = load_patch_list(metadata)
    if patch_ids is not None:
        wanted = set(patch_ids)
        patches = [p for p in patches if p.patch_id in wanted]
    env = open_reben_lmdb(lmdb_dir, lock=False)

    def write(path: Path, arr: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixel = 10.0 * PATCH_SIZE / arr.shape[0]
        profile = {
            "driver": "GTiff", "width": arr.shape[1], "height": arr.shape[0], "count": 1, "dtype": arr.dtype.name,
            "crs": "EPSG:32633", "transform": Affine(pixel, 0.0, 500000.0, 0.0, -pixel, 5300000.0),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr, 1)

    try:
        with env.begin(buffers=False) as txn, rasterio.Env(**_GDAL_OPTIONS):
            for p in patches:
                tile = p.patch_id.rsplit("_", 2)[0]
                product = p.s1_name.rsplit("_", 3)[0]
                for band, arr in safetensors.numpy.load(txn.get(p.patch_id.encode())).items():
                    write(Path(s2_root) / tile / p.patch_id / f"{p.patch_id}_{band}.tif", arr)
                for band, arr in safetensors.numpy.load(txn.get(p.s1_name.encode())).items():
                    write(Path(s1_root) / product / p.s1_name / f"{p.s1_name}_{band}.tif", arr)
                if maps_root is not None:
                    arr = safetensors.numpy.load(txn.get(p.map_key.encode()))[REFERENCE_MAP_TENSOR]
                    write(Path(maps_root) / tile / p.patch_id / f"{p.map_key}.tif", arr)
    finally:
        env.close()
    return len(patches)


__all__ = [
    "NOT_IN_METADATA_FILE",
    "SKIPPED_FILE",
    "EncodeError",
    "EncodeSummary",
    "PatchKeys",
    "VerifySummary",
    "check_value",
    "encode_reben",
    "export_geotiff_tree",
    "load_patch_list",
    "scan_patch_folders",
    "verify_reben",
]
