"""Writing the synthetic dataset through the reBEN writer, and keeping it in a cache folder."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Final

from splml.data.synthetic.config import GENERATOR_VERSION, SyntheticConfig
from splml.data.synthetic.scene import PatchHeader, generate_scene, plan_headers
from splml.io.reben.format import CLASS_NAMES, METADATA_FILE, PATCH_SIZE, S1_BANDS, S2_BAND_SIZES, SPLITS, PatchKeys
from splml.io.reben.metadata import write_metadata
from splml.io.reben.writer import ReBENWriter

#: Name of the LMDB directory inside a dataset root.
LMDB_DIR: Final[str] = "lmdb"
#: Written into a root (with the config) as the very last step; a root without it is unfinished.
COMPLETE_MARKER: Final[str] = "synthetic_config.json"

_PATCHES_PER_TXN: Final[int] = 64


def _bytes_per_patch(with_maps: bool) -> int:
    npix = PATCH_SIZE * PATCH_SIZE
    s2 = sum(size * size * 2 for size in S2_BAND_SIZES.values())
    s1 = len(S1_BANDS) * npix * 4
    ref = npix * 2 if with_maps else 0
    return s2 + s1 + ref


def _chunks(items: list[PatchHeader], size: int) -> Iterator[list[PatchHeader]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_synthetic_reben(
    root: Path, cfg: SyntheticConfig, progress: bool = True, first: Mapping[str, int] | None = None
) -> Path:
    """Write a synthetic reBEN dataset: ``root/lmdb/`` (data.mdb) and ``root/metadata.parquet``.

    The files follow the official format exactly (they are written by the same
    :class:`~splml.io.reben.writer.ReBENWriter` as the GeoTIFF encoder's), so the real reader
    is exercised by every test and experiment that uses them. ``root`` must not already hold a
    dataset (refusing avoids silently mixing two generations). ``first`` (``{split: k}``) writes
    only the first k patches of those splits: byte for byte the same patches as in the dataset of
    ``cfg``, which is planned whole. Returns ``root``.
    """
    root = Path(root)
    lmdb_dir = root / LMDB_DIR
    if (lmdb_dir / "data.mdb").exists() or (root / METADATA_FILE).exists():
        raise FileExistsError(f"{root} already holds a dataset; remove it or choose another folder")

    headers = plan_headers(cfg)
    if first:
        headers = [h for h in headers if h.index < first.get(h.split, h.index + 1)]
    by_id = sorted(headers, key=lambda h: h.patch_id)  # write in key order
    labels_of: dict[str, list[int]] = {}
    map_size = int(len(headers) * (_bytes_per_patch(cfg.with_reference_maps) + 64 * 1024) * 1.5) + (64 << 20)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(headers), unit="patch", desc="synthetic reBEN")
    try:
        # Not durable per transaction: an unfinished generation is thrown away (ensure_synthetic).
        with ReBENWriter(lmdb_dir, map_size=map_size, durable=False, overwrite=False) as writer:
            for chunk in _chunks(by_id, _PATCHES_PER_TXN):
                entries: list[tuple[str, dict]] = []
                for h in chunk:
                    scene = generate_scene(h, cfg)
                    labels_of[h.patch_id] = scene.labels
                    reference_map = scene.codes if cfg.with_reference_maps else None
                    entries.extend(PatchKeys(h.patch_id, h.s1_name).values(scene.s2, scene.s1, reference_map).items())
                    if bar is not None:
                        bar.update(1)
                writer.write(entries)
    finally:
        if bar is not None:
            bar.close()

    write_metadata(root / METADATA_FILE, [_metadata_row(h, labels_of[h.patch_id]) for h in headers])
    return root


def _metadata_row(h: PatchHeader, labels: list[int]) -> dict[str, object]:
    return {
        "patch_id": h.patch_id,
        "labels": sorted(CLASS_NAMES[c] for c in labels),
        "split": h.split,
        "country": h.country,
        "s1_name": h.s1_name,
        "s2v1_name": h.s2v1_name,
        "contains_seasonal_snow": h.snow,
        "contains_cloud_or_shadow": h.cloud,
    }


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def synthetic_root(cache_dir: Path, cfg: SyntheticConfig, first: Mapping[str, int] | None = None) -> Path:
    """Where :func:`ensure_synthetic` keeps the dataset of ``cfg`` (it may not exist yet).

    A part of it (``first``, see :func:`generate_synthetic_reben`) lives beside it, named by its
    sizes: ``reben-synthetic-<key>-first-64-32-32`` (train, validation, test).
    """
    name = f"reben-synthetic-{cfg.cache_key()}"
    counts = first_counts(cfg, first)
    if counts is not None:
        name += "-first-" + "-".join(str(counts[s]) for s in SPLITS)
    return Path(cache_dir) / name


def first_counts(cfg: SyntheticConfig, first: Mapping[str, int | None] | None) -> dict[str, int] | None:
    """The patches per split that ``first`` keeps of ``cfg`` (None when it keeps every patch)."""
    full = cfg.split_counts()
    if not first:
        return None
    counts = {s: min(full[s], int(first[s])) if first.get(s) is not None else full[s] for s in SPLITS}
    return None if counts == full else counts


def is_complete(root: Path) -> bool:
    """True when ``root`` is a finished dataset (the completion marker is written last)."""
    root = Path(root)
    return (
        (root / COMPLETE_MARKER).is_file()
        and (root / METADATA_FILE).is_file()
        and (root / LMDB_DIR / "data.mdb").is_file()
    )


def ensure_synthetic(cache_dir: Path, cfg: SyntheticConfig, first: Mapping[str, int | None] | None = None) -> Path:
    """Return the dataset root for ``cfg`` (only its ``first`` patches per split, when given) under
    ``cache_dir``, generating it on first use.

    Generation goes to a temporary sibling folder that is renamed into place only once it is
    complete, so a crash never leaves a half dataset that looks finished. An exclusive
    ``fcntl.flock`` on a lock file serialises concurrent callers (several DataLoader or DDP
    processes): the first generates, the others wait and then reuse its result.
    """
    cache_dir = Path(cache_dir)
    counts = first_counts(cfg, first)
    final = synthetic_root(cache_dir, cfg, counts)
    if is_complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f".{final.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if is_complete(final):
                return final
            # Under the lock nobody else is generating this config: leftovers are dead.
            for stale in cache_dir.glob(f"{final.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():
                shutil.rmtree(final)
            tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                generate_synthetic_reben(tmp, cfg, progress=True, first=counts)
                marker = {"config": asdict(cfg), "generator_version": GENERATOR_VERSION}
                if counts is not None:
                    marker["first"] = counts
                (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return final
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
