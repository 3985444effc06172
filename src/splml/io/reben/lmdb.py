"""Opening a reBEN LMDB: checked complete first, one handle per file and process.

Every reader and writer opens the LMDB through :func:`open_reben_lmdb`. A ``data.mdb`` shorter
than its own metadata says is refused by name before anything is read: reading a page past
the end of a memory-mapped file is a SIGBUS, which kills the process without an exception.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lmdb

from splml.io.errors import DataFormatError


class TruncatedLMDBError(DataFormatError):
    """``data.mdb`` is shorter than the LMDB's own metadata says: an interrupted copy, or a writer still at work.

    Checked before any read because reading a page past the end of a memory-mapped file is a
    SIGBUS: no exception, the process (a DataLoader worker, a whole Hydra sweep) just dies.
    """


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


def lmdb_used_bytes(env: lmdb.Environment) -> int:
    """Bytes the database occupies in ``data.mdb`` by its own metadata: pages 0 .. last_pgno.

    Read from the meta pages at the start of the file (so it is safe on a truncated file); the
    file of a complete LMDB is at least this long, and the map itself is sparse and larger.
    """
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def open_reben_lmdb(path: str | Path, *, readonly: bool = True, **options: Any) -> lmdb.Environment:
    """Open the LMDB directory ``path`` (``lmdb.open`` ``options``) after checking that ``data.mdb`` is complete.

    A ``data.mdb`` shorter than :func:`lmdb_used_bytes` (an interrupted copy or download, or a
    writer still at work) raises :class:`TruncatedLMDBError` naming the file and both sizes; a
    file too short to hold its own header is a :class:`~splml.io.errors.DataFormatError`. A
    missing ``data.mdb`` is a FileNotFoundError when reading; a writer creates it.
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
            check_complete(env, data_file)
        except Exception:
            env.close()
            raise
    return env


def check_complete(env: lmdb.Environment, data_file: Path) -> None:
    """Raise :class:`TruncatedLMDBError` when ``data_file`` is shorter than ``env``'s metadata needs."""
    needed, actual = lmdb_used_bytes(env), data_file.stat().st_size
    if actual < needed:
        raise TruncatedLMDBError(
            f"{data_file} is truncated or still being written: it holds {actual:,} bytes but the LMDB's own "
            f"metadata needs at least {needed:,} bytes ({needed // env.stat()['psize']:,} pages of "
            f"{env.stat()['psize']} bytes). Copy it again or wait for its writer to finish (an encoder output: "
            "delete it and encode again); reading it would kill the process with SIGBUS"
        )


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}
# Bumped by close_lmdb, so that readers holding a handle fetch a fresh one.
_CLOSED_COUNT = 0


def closed_count() -> int:
    """How many times :func:`close_lmdb` ran in this process (a reader's handle older than that is stale)."""
    return _CLOSED_COUNT


def open_lmdb(path: Path) -> lmdb.Environment:
    """A read-only environment for ``path``, shared by every reader of this process (checked complete).

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
            check_complete(env, Path(path) / "data.mdb")
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
