"""Disk-backed heatmaps: one memory-mapped file per rank, and checksummed checkpoint snapshots.

With ``memmap_dir`` the N x C x W x W uint8 maps live in ``<memmap_dir>/heatmaps.uint8``
(``numpy.memmap``) and are only ever read and written by row index, so the store may exceed RAM.
A checkpoint then holds a reference to a snapshot file (path, shape, blake2b checksum) instead of
the array; restoring copies the snapshot back to the live file and verifies it on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from splml.methods.store import distributed_ready

#: Name of the live memory-mapped store inside ``memmap_dir``.
LIVE_FILE = "heatmaps.uint8"
#: How many checkpoint snapshots of a memory-mapped store are kept on disk.
KEEP_SNAPSHOTS = 2
#: Chunk size for copying/hashing store files and for whole-store passes (diagnostics, init).
CHUNK_BYTES = 64 * 1024 * 1024


def rank() -> int:
    return dist.get_rank() if distributed_ready() else 0


def copy_with_checksum(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` in chunks and return the blake2b digest of the bytes copied.

    One pass does both, so snapshotting or restoring a store larger than RAM reads it once.
    """
    digest = hashlib.blake2b(digest_size=20)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


class MemmapFile:
    """This rank's live memory-mapped heatmaps in ``directory``, and the snapshots next to them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The open map (None until :meth:`open`), and the tensor view of it.
        self.array: np.memmap | None = None
        self.tensor: Tensor | None = None
        self._last_snapshot: dict[str, Any] | None = None

    @property
    def live_path(self) -> Path:
        """This rank's live file (ranks > 0 use a sub-folder: each process owns its file)."""
        r = rank()
        return self.directory / LIVE_FILE if r == 0 else self.directory / f"rank{r}" / LIVE_FILE

    def open(self, shape: tuple[int, ...], mode: str) -> Tensor:
        """Map the live file (``w+`` creates it, ``r+`` reopens it) and return it as a uint8 tensor."""
        path = self.live_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.array = np.memmap(path, dtype=np.uint8, mode=mode, shape=shape)
        # Rows are read and written at random indices: without this advice every page fault
        # reads ahead (8 MiB on typical disks), which pulled the whole multi-GB file into the
        # page cache at creation (experiments/methods/README.md). Only touched pages now load.
        if hasattr(mmap, "MADV_RANDOM") and getattr(self.array, "_mmap", None) is not None:
            self.array._mmap.madvise(mmap.MADV_RANDOM)
        self.tensor = torch.from_numpy(self.array)
        return self.tensor

    @contextlib.contextmanager
    def sequential(self) -> Iterator[None]:
        """Advise sequential access (read-ahead) for a pass over the whole file, then random access again.

        Rows are read at random during training (``MADV_RANDOM``: no read-ahead); a whole-store pass
        with that advice faults in one 4 KiB page at a time, which at ImageNet scale (2.5 GB) made
        the end-of-epoch pass minutes long (``experiments/methods/README.md``).
        """
        mapped = getattr(self.array, "_mmap", None) if self.array is not None else None
        advise = mapped is not None and hasattr(mmap, "MADV_SEQUENTIAL")
        if advise:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        try:
            yield
        finally:
            if advise and self.array is not None and getattr(self.array, "_mmap", None) is mapped:
                mapped.madvise(mmap.MADV_RANDOM)

    def close(self) -> None:
        """Drop the map (the file stays); the store is unusable until it is opened again."""
        self.array, self.tensor = None, None

    def flush(self) -> None:
        """Write memory-mapped pages to disk (no-op before the file is opened)."""
        if self.array is not None:
            self.array.flush()

    def snapshot(self, step: int, updates: Any, shape: tuple[int, ...]) -> dict[str, Any]:
        """A reference to a snapshot of the live file as of ``step``, written if needed.

        The snapshot (``heatmaps-step<step>.uint8``) is written by rank 0 only, the rank whose
        checkpoint Lightning saves; other ranks return the same reference without copying.
        Saving twice without an update in between (best + last checkpoints) reuses the snapshot.
        """
        self.flush()
        name = f"heatmaps-step{step}.uint8"
        target = self.directory / name
        reference = {"path": str(target), "file": name, "shape": list(shape), "checksum": None}
        if rank() != 0:
            return reference
        key = (step, updates)
        if self._last_snapshot is not None and self._last_snapshot["key"] == key and target.exists():
            return dict(self._last_snapshot["reference"])
        tmp = target.with_name(name + ".tmp")
        reference["checksum"] = copy_with_checksum(self.live_path, tmp)
        os.replace(tmp, target)
        self._last_snapshot = {"key": key, "reference": dict(reference)}
        self._prune()
        return reference

    def forget_snapshot(self) -> None:
        """The live file no longer matches the last snapshot written (a checkpoint was loaded)."""
        self._last_snapshot = None

    def _prune(self) -> None:
        """Keep the most recently written snapshots (by mtime, so a resumed run's count first)."""

        def age(path: Path) -> tuple[int, int]:
            step = path.name.removeprefix("heatmaps-step").removesuffix(".uint8")
            return path.stat().st_mtime_ns, int(step) if step.isdigit() else -1

        snapshots = sorted(self.directory.glob("heatmaps-step*.uint8"), key=age)
        for old in snapshots[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)

    def restore(self, reference: dict[str, Any], shape: tuple[int, ...]) -> Tensor:
        """Copy the snapshot back to the live file, verify its checksum and map it again."""
        if reference.get("checksum") is None:
            raise ValueError("this heatmap-store state was not written by rank 0 and has no snapshot checksum")
        snapshot = Path(reference["path"])
        if not snapshot.exists():
            snapshot = self.directory / reference["file"]
        if not snapshot.exists():
            raise FileNotFoundError(
                f"heatmap store snapshot {reference['path']} is missing, nor is it in this run's memmap_dir "
                f"{self.directory} (only the {KEEP_SNAPSHOTS} most recent snapshots are kept; a moved run folder "
                f"takes its snapshots along: copy {reference['file']} into {self.directory}); resume from a recent "
                f"checkpoint or without its callback state"
            )
        expected = int(np.prod(reference["shape"]))
        if snapshot.stat().st_size != expected:
            raise ValueError(
                f"heatmap store snapshot {snapshot} is corrupt: {snapshot.stat().st_size} bytes, expected {expected}"
            )
        if tuple(reference["shape"]) != tuple(shape):
            raise ValueError(f"heatmap store snapshot has shape {reference['shape']}, this run needs {tuple(shape)}")
        self.close()
        live = self.live_path
        live.parent.mkdir(parents=True, exist_ok=True)
        tmp = live.with_name(live.name + ".restore")
        checksum = copy_with_checksum(snapshot, tmp)
        if checksum != reference["checksum"]:
            tmp.unlink(missing_ok=True)
            raise ValueError(
                f"heatmap store snapshot {snapshot} is corrupt: checksum {checksum} != {reference['checksum']}"
            )
        os.replace(tmp, live)
        return self.open(shape, "r+")
