"""Encode the reBEN (BigEarthNet v2.0) GeoTIFF archive into the LMDB that :mod:`splml.io.reben.reader` reads.

Why a project encoder: the reader is written against ``shared/specs/datasets.md`` and must be
fed files in exactly that format; encoding ourselves from the GeoTIFF release (instead of
trusting a pre-encoded LMDB of unknown provenance) means every byte the models see can be
traced back to a source file, and every problem in the sources is reported by name.

``metadata.parquet`` decides which patches are encoded (and gives the ``s1_name`` of each).
A patch folder that the metadata does not mention (:mod:`splml.io.reben.geotiff` finds them)
is reported as "not in metadata" and not encoded (the official archive also holds the
snow/cloud patches, which live in a separate metadata file: pass both files to encode those
too). Values are written by the one writer, :class:`~splml.io.reben.writer.ReBENWriter`.

Reliability rules: every problem of a source is an :class:`EncodeError` naming the file and
patch, unless ``skip_bad`` is set, in which case the patch is logged, counted, left out and
listed in ``<out>/skipped_patches.csv``. Nothing is ever dropped silently.

Re-running on an existing output resumes: keys already present are checked by
:func:`~splml.io.reben.values.check_value` (tensor names, shapes, dtypes, value ranges, map
codes) and kept; a random sample of them (``compare_source`` patches, or all) is also compared
byte for byte with the source rasters; missing, corrupt or mismatching patches are
(re-)encoded. :func:`~splml.io.reben.verify.verify_reben` runs the same check on every key
without touching the sources.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Final, Literal

import lmdb
import numpy as np

from splml.io.reben.format import PATCH_SIZE, S1_BANDS, S2_BAND_SIZES, VALUE_RANGES, PatchKeys, resolve_value_range
from splml.io.reben.geotiff import EncodeError, Sources, read_all, scan_patch_folders
from splml.io.reben.metadata import load_patch_list
from splml.io.reben.values import check_value, same_arrays
from splml.io.reben.writer import ReBENWriter
from splml.io.run_folder import write_rows

log = logging.getLogger(__name__)

#: Written into the output folder when ``skip_bad`` is set: one row per patch left out.
SKIPPED_FILE: Final[str] = "skipped_patches.csv"
#: Written into the output folder when some source folders have no metadata row.
NOT_IN_METADATA_FILE: Final[str] = "not_in_metadata.csv"
#: Raw bytes of one patch's values (S2 + S1 + map); the safetensors headers add a few hundred.
_S2_BYTES: Final[int] = sum(2 * s * s for s in S2_BAND_SIZES.values())
_S1_BYTES: Final[int] = 4 * PATCH_SIZE * PATCH_SIZE * len(S1_BANDS)
_MAP_BYTES: Final[int] = 2 * PATCH_SIZE * PATCH_SIZE
_MIN_MAP_SIZE: Final[int] = 64 << 20


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


def _batches(items: Sequence[PatchKeys], size: int) -> Iterator[Sequence[PatchKeys]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        write_rows(out / NOT_IN_METADATA_FILE, ("source", "folder"), summary.not_in_metadata)

    per_patch = _S2_BYTES + _S1_BYTES + (_MAP_BYTES if with_maps else 0) + 3 * 4096
    initial = map_size if map_size is not None else max(_MIN_MAP_SIZE, int(len(patches) * per_patch * 1.1))
    sources = Sources(
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
        writer = cleanup.enter_context(ReBENWriter(out, map_size=initial))
        env = writer.env
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
                writer, batch, summary, pool=pool, workers=workers, with_maps=with_maps, present=present_set,
                to_compare=to_compare, sources=sources, skip_bad=skip_bad,
            )  # fmt: skip
            if bar is not None:
                bar.update(len(batch))
        summary.lmdb_bytes = writer.used_bytes()
    if skip_bad:
        write_rows(out / SKIPPED_FILE, ("patch_id", "reason"), summary.bad)
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
    writer: ReBENWriter,
    batch: Sequence[PatchKeys],
    summary: EncodeSummary,
    *,
    pool: Executor | None,
    workers: int,
    with_maps: bool,
    present: set[str],
    to_compare: set[str],
    sources: Sources,
    skip_bad: bool,
) -> None:
    """Check the present patches of one batch, read the sources it needs, write one transaction."""
    repair: set[str] = set()
    kept: dict[str, dict[str, bytes]] = {}  # present, structurally fine; values kept for the source comparison
    with writer.env.begin(buffers=False) as txn:
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
    entries: dict[str, dict[str, np.ndarray]] = {}
    deletes: list[str] = []
    for task, (arrays, reason) in zip(tasks, read_all(tasks, pool, workers), strict=True):
        pid = task.keys.patch_id
        if arrays is None:
            if pid in kept:
                reason = f"{reason} (found while comparing; its LMDB values passed the checks and are kept)"
            elif pid in repair:
                # A missing key is a clearer state than a corrupt one for whoever reads the LMDB next.
                reason = f"{reason} (its corrupt LMDB values were deleted)"
                deletes.extend(key for key, _ in task.keys.keys(with_maps))
            if not skip_bad:
                raise EncodeError(f"patch {pid}: {reason}")
            log.warning("skipping bad patch %s: %s", pid, reason)
            summary.bad.append((pid, str(reason)))
            continue
        if pid in kept:
            summary.compared += 1
            if all(same_arrays(kept[pid][key], arrays[key]) for key in arrays):
                summary.skipped += 1
                continue
            log.warning("patch %s differs from its source rasters: re-encoding it", pid)
            repair.add(pid)
        if pid in repair:
            summary.repaired += 1
        summary.encoded += 1
        entries.update(arrays)
    if entries or deletes:
        writer.write(entries, deletes)
