"""Reading the reBEN GeoTIFF release (the encoder's sources), and writing it back for tests and benchmarks.

Layout read (the official release):

* ``BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif``: 12 bands (no B10), uint16, at
  their native size (120, 60 or 20 pixels);
* ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_VV.tif`` and ``_VH.tif``: float32 dB, 120 x 120;
* optionally ``Reference_Maps/<tile>/<patch_id>/<patch_id>_reference_map.tif``: uint16 CLC codes.

Patch folders are found by scanning two directory levels, so the name of the tile/product
folder does not matter. Every problem of a source (missing folder or band file, unreadable or
truncated TIFF, wrong shape or dtype, NaN/inf or a value outside ``value_range``, invalid CLC
code) is a reason naming the file, which the encoder turns into an error or a skipped patch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from splml.io.errors import DataFormatError
from splml.io.reben.format import (
    PATCH_SIZE,
    REFERENCE_MAP_SUFFIX,
    REFERENCE_MAP_TENSOR,
    S1_BANDS,
    S2_BAND_SIZES,
    PatchKeys,
)
from splml.io.reben.lmdb import open_reben_lmdb
from splml.io.reben.metadata import load_patch_list
from splml.io.reben.values import invalid_map_codes, safetensors_views, value_problem

#: GDAL must not list each patch folder looking for sidecar files: it costs a readdir per TIFF.
GDAL_OPTIONS: Final[dict[str, str]] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


class EncodeError(DataFormatError):
    """A source file or the metadata is unusable; the message names the file and the patch."""


class BadSource(Exception):
    """One patch's sources are unusable (``reason`` names the file)."""


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
class Sources:
    """The source roots and the patch folders found under them."""

    s2_root: Path
    s1_root: Path
    maps_root: Path | None
    s2_dirs: dict[str, Path]
    s1_dirs: dict[str, Path]
    map_dirs: dict[str, Path]
    value_range: dict[str, tuple[float, float] | None]

    def task(self, p: PatchKeys) -> SourceTask:
        return SourceTask(
            p, self.s2_dirs.get(p.patch_id), self.s1_dirs.get(p.s1_name), self.map_dirs.get(p.patch_id),
            self.s2_root, self.s1_root, self.maps_root, self.value_range,
        )  # fmt: skip


@dataclass(frozen=True)
class SourceTask:
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
    """One single-band raster, checked for band count, size and dtype (raises BadSource).

    Opening is the dominant cost of the encoder, so the file is not stat-ed first: a missing
    file is recognised after the open fails.
    """
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise BadSource(f"{path}: {src.count} bands in the file, expected 1")
            arr = src.read(1)
    except BadSource:
        raise
    except Exception as exc:  # GDAL raises several types for broken files
        if not path.is_file():
            raise BadSource(f"missing file {path}") from None
        raise BadSource(f"unreadable TIFF {path}: {exc}") from exc
    if arr.shape != (size, size) or arr.dtype != dtype:
        raise BadSource(
            f"{path}: expected {np.dtype(dtype).name} {size}x{size}, got {arr.dtype.name} {arr.shape[0]}x{arr.shape[1]}"
        )
    return np.ascontiguousarray(arr)


def _read_sources(task: SourceTask) -> dict[str, dict[str, np.ndarray]]:
    """Every value of one patch as ``{lmdb key: {tensor name: array}}`` (raises BadSource)."""
    pid, s1 = task.keys.patch_id, task.keys.s1_name
    if task.s2_dir is None:
        raise BadSource(f"no Sentinel-2 folder {pid} under {task.s2_root}/<tile>/")
    if task.s1_dir is None:
        raise BadSource(f"no Sentinel-1 folder {s1} under {task.s1_root}/<product>/")
    bands_of: dict[str, dict[str, np.ndarray]] = {}
    for key, folder, modality, bands in (
        (pid, task.s2_dir, "s2", [(b, size, np.uint16) for b, size in S2_BAND_SIZES.items()]),
        (s1, task.s1_dir, "s1", [(b, PATCH_SIZE, np.float32) for b in S1_BANDS]),
    ):
        bands_of[modality] = {}
        for b, size, dtype in bands:
            path = folder / f"{key}_{b}.tif"
            arr = bands_of[modality][b] = _read_raster(path, size, dtype)
            if problem := value_problem(arr, task.value_range[modality], modality):
                raise BadSource(f"{path}: {problem}")
    codes = None
    if task.maps_root is not None:
        if task.map_dir is None:
            raise BadSource(f"no reference-map folder {pid} under {task.maps_root}/<tile>/")
        path = task.map_dir / f"{pid}{REFERENCE_MAP_SUFFIX}.tif"
        codes = _read_raster(path, PATCH_SIZE, np.uint16)
        invalid = invalid_map_codes(codes)
        if invalid.size:
            raise BadSource(f"{path}: values {invalid[:10].tolist()} are not CORINE level-3 codes")
    return task.keys.values(bands_of["s2"], bands_of["s1"], codes)


SourceResult = tuple[dict[str, dict[str, np.ndarray]] | None, str | None]


def _read_chunk(tasks: list[SourceTask]) -> list[SourceResult]:
    """Read several patches in one GDAL environment: ``(values, None)`` or ``(None, reason)`` each."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    out: list[SourceResult] = []
    with rasterio.Env(**GDAL_OPTIONS), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the pixels are all the LMDB keeps
        for task in tasks:
            try:
                out.append((_read_sources(task), None))
            except BadSource as bad:
                out.append((None, str(bad)))
    return out


def read_all(tasks: list[SourceTask], pool: Executor | None, workers: int) -> list[SourceResult]:
    if pool is None or len(tasks) < 2:
        return _read_chunk(tasks)
    size = max(1, math.ceil(len(tasks) / (4 * workers)))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    return [r for part in pool.map(_read_chunk, chunks) for r in part]


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
        with env.begin(buffers=False) as txn, rasterio.Env(**GDAL_OPTIONS):
            for p in patches:
                tile = p.patch_id.rsplit("_", 2)[0]
                product = p.s1_name.rsplit("_", 3)[0]
                for band, arr in safetensors_views(txn.get(p.patch_id.encode())).items():
                    write(Path(s2_root) / tile / p.patch_id / f"{p.patch_id}_{band}.tif", arr)
                for band, arr in safetensors_views(txn.get(p.s1_name.encode())).items():
                    write(Path(s1_root) / product / p.s1_name / f"{p.s1_name}_{band}.tif", arr)
                if maps_root is not None:
                    arr = safetensors_views(txn.get(p.map_key.encode()))[REFERENCE_MAP_TENSOR]
                    write(Path(maps_root) / tile / p.patch_id / f"{p.map_key}.tif", arr)
    finally:
        env.close()
    return len(patches)
