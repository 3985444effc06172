"""Reading the values of a reBEN LMDB: views of its pages (no copy), every problem named.

:class:`ReBENReader` is the one reader of the LMDB: the dataset decodes its bands through it,
the annotation tool and the label-file script read reference maps through it. The environment
is opened lazily and re-opened in every process that touches it (an LMDB handle must not cross
a ``fork``), so DataLoader workers are safe with any start method.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from splml.io.errors import DataFormatError
from splml.io.reben.format import PATCH_SIZE, REFERENCE_MAP_SUFFIX, REFERENCE_MAP_TENSOR, S2_BAND_SIZES
from splml.io.reben.lmdb import closed_count, open_lmdb
from splml.io.reben.values import safetensors_views


class ReBENReader:
    """The values of the LMDB directory ``lmdb_path``; fails at once, naming the file, if it is truncated.

    The handle is cached per process by :func:`~splml.io.reben.lmdb.open_lmdb`, not pickled with
    the reader, so a reader (and the dataset holding it) pickles for spawned workers.
    """

    def __init__(self, lmdb_path: str | Path) -> None:
        self.path = Path(lmdb_path)
        self._env_handle: lmdb.Environment | None = None
        self._env_owner: tuple[int, int] | None = None
        open_lmdb(self.path)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env_handle": None, "_env_owner": None}

    def env(self) -> lmdb.Environment:
        """This process's environment (``open_lmdb`` resolves the path on every call; remember it instead)."""
        owner = (os.getpid(), closed_count())
        if self._env_owner != owner or self._env_handle is None:
            self._env_handle, self._env_owner = open_lmdb(self.path), owner
        return self._env_handle

    def begin(self) -> lmdb.Transaction:
        """A read transaction whose values are buffers into the LMDB pages (valid while it is open)."""
        return self.env().begin(buffers=True)

    def views(self, txn: lmdb.Transaction, key: str) -> dict[str, np.ndarray]:
        """The arrays of one value as read-only views into the LMDB page (valid while ``txn`` is open)."""
        value = txn.get(key.encode("utf-8"))
        if value is None:
            raise KeyError(f"{self.path}: key {key!r} not found in the LMDB")
        try:
            return safetensors_views(value)
        except ValueError as exc:
            raise DataFormatError(f"{self.path}: value of key {key!r} is not a valid safetensors dict ({exc})") from exc

    def read(self, key: str) -> dict[str, np.ndarray]:
        """Every array of one value, as copies (for callers that keep them)."""
        with self.begin() as txn:
            return {name: arr.copy() for name, arr in self.views(txn, key).items()}

    def reference_map(self, patch_id: str) -> np.ndarray:
        """The 120 x 120 CLC-coded reference map of ``patch_id`` (uint16)."""
        key = patch_id + REFERENCE_MAP_SUFFIX
        arrays = self.read(key)
        if REFERENCE_MAP_TENSOR not in arrays:
            raise DataFormatError(
                f"{self.path}: reference map {key!r} has no {REFERENCE_MAP_TENSOR!r} array (found {sorted(arrays)})"
            )
        data = arrays[REFERENCE_MAP_TENSOR]
        if data.shape != (PATCH_SIZE, PATCH_SIZE):
            raise DataFormatError(f"{self.path}: reference map {key!r} has shape {data.shape}")
        return data

    def bands(
        self, key: str, arrays: dict[str, np.ndarray], bands: Sequence[str], dtype: type
    ) -> dict[str, np.ndarray]:
        """``bands`` of the value ``arrays`` of ``key``, each checked for its native size and ``dtype``."""
        out = {}
        for b in bands:
            if b not in arrays:
                raise DataFormatError(f"{self.path}: patch {key!r} has no band {b!r} (found {sorted(arrays)})")
            arr = arrays[b]
            expected = S2_BAND_SIZES.get(b, PATCH_SIZE)
            if arr.shape != (expected, expected) or arr.dtype != dtype:
                raise DataFormatError(
                    f"{self.path}: patch {key!r}, band {b}: expected {np.dtype(dtype).name} "
                    f"{expected}x{expected}, got {arr.dtype} {arr.shape}"
                )
            out[b] = arr
        return out
