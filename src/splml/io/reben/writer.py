"""The one writer of reBEN LMDBs, used by the synthetic generator and the GeoTIFF encoder.

Values are serialised by :func:`~splml.io.reben.values.encode_value`; each batch is written
sorted by key in a single transaction (sequential page writes, and a batch is all or nothing);
the map size starts from the caller's estimate and doubles whenever it is full.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import lmdb
import numpy as np

from splml.io.reben.lmdb import lmdb_used_bytes, open_reben_lmdb
from splml.io.reben.values import encode_value

log = logging.getLogger(__name__)

#: ``{LMDB key: {tensor name: array}}`` (or its items): the values of one or more patches.
Entries = Mapping[str, Mapping[str, np.ndarray]] | Iterable[tuple[str, Mapping[str, np.ndarray]]]


class ReBENWriter:
    """Writes values into the LMDB directory ``path`` (created when missing; a truncated one is refused).

    ``durable=False`` skips the per-transaction ``fsync`` and syncs once at :meth:`close`: for a
    generator whose output is thrown away unless it finishes. ``overwrite=False`` makes a key
    written twice an error (a generator's duplicate is a bug; an encoder repairing a key
    overwrites it).
    """

    def __init__(self, path: str | Path, *, map_size: int, durable: bool = True, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self.overwrite = overwrite
        options = {} if durable else {"sync": False, "metasync": False}
        self.env = open_reben_lmdb(self.path, readonly=False, map_size=map_size, readahead=False, max_dbs=0, **options)

    def write(self, entries: Entries, deletes: Iterable[str] = ()) -> None:
        """Write ``entries`` (and delete the keys ``deletes``) in one transaction, in key order."""
        items = entries.items() if isinstance(entries, Mapping) else entries
        encoded = sorted((key.encode(), encode_value(dict(tensors))) for key, tensors in items)
        removed = [key.encode() for key in deletes]
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key in removed:
                        txn.delete(key)
                    for key, value in encoded:
                        if not txn.put(key, value, overwrite=self.overwrite):
                            raise RuntimeError(f"duplicate LMDB key {key.decode()!r} in {self.path}")
                return
            except lmdb.MapFullError:
                new_size = self.env.info()["map_size"] * 2
                log.info("LMDB map full: growing it to %.1f GiB", new_size / 2**30)
                self.env.set_mapsize(new_size)

    def used_bytes(self) -> int:
        """Bytes the database occupies in ``data.mdb``."""
        return lmdb_used_bytes(self.env)

    def close(self) -> None:
        """Flush everything to disk and close the environment."""
        if self.env is not None:
            try:
                self.env.sync(True)
            finally:
                self.env.close()
                self.env = None  # type: ignore[assignment]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
