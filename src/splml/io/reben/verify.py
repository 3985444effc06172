"""Check every key of a reBEN LMDB against its metadata, without the sources (``encode_reben.py --verify``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splml.io.reben.format import REFERENCE_MAP_SUFFIX, VALUE_RANGES, resolve_value_range
from splml.io.reben.lmdb import open_reben_lmdb
from splml.io.reben.metadata import load_patch_list
from splml.io.reben.values import check_value


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
    ``data.mdb`` raises :class:`~splml.io.reben.lmdb.TruncatedLMDBError` before anything is read.
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
