"""Several annotators on one dataset: ``shard=i/n`` gives each a disjoint part of the images.

A share ``overlap`` of the images (at least one when it is above 0) goes to every shard, so
that the merge (:mod:`splml.annotate.merge`) can measure how much the annotators agree; the
rest is dealt out in turns. Which images are shared and whose turn each of the others is follows
from a hash of ``(seed, image id)``, so the parts are the same on every machine, whatever the
order in which the annotators start, and every shard has the same number of images (within one).
The shard is recorded in the first row of its file (:class:`splml.io.label_files.ShardInfo`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path

from splml.io.label_files import LabelFileError, ShardInfo, dataset_fingerprint, read_annotation_file

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n (ValueError naming the value otherwise)."""
    match = _SHARD.fullmatch(str(text))
    if match is None:
        raise ValueError(f"shard must be i/n (this annotator's part i of n, e.g. shard=2/3), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"shard {text!r}: i must be between 1 and n")
    return index, count


def _rank_key(seed: int, image_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).digest()


def shard_indices(ids: Sequence[str], index: int, count: int, overlap: float = 0.0, seed: int = 0) -> list[int]:
    """Positions (in dataset order) of the images of shard ``index`` of ``count``."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a share between 0 and 1, got {overlap}")
    ranked = sorted(range(len(ids)), key=lambda i: _rank_key(seed, ids[i]))
    shared = math.ceil(overlap * len(ids)) if count > 1 else 0
    rest = ranked[shared:]
    return sorted(ranked[:shared] + rest[index - 1 :: count])


def shard_info(
    ids: Sequence[str], class_names: Sequence[str], shard: str, overlap: float, seed: int
) -> tuple[ShardInfo, list[int]]:
    """The metadata of shard ``shard`` (``"i/n"``) of the dataset ``ids``, and its positions."""
    index, count = parse_shard(shard)
    positions = shard_indices(ids, index, count, overlap, seed)
    info = ShardInfo(index, count, float(overlap), int(seed), len(positions), len(ids),
                     dataset_fingerprint(ids, class_names))  # fmt: skip
    return info, positions


def shard_mismatch(path: str | Path, found: ShardInfo, wanted: ShardInfo | None) -> LabelFileError:
    """The error for an annotation file made for another shard than the one asked for."""
    asked = "no shard" if wanted is None else f"shard {wanted.note()}"
    return LabelFileError(
        f"{path} was made for shard {found.note()}, not for {asked}: start the annotation with the shard options "
        "of the file (shard, overlap, shard_seed and the same dataset options) or give out= another file"
    )


def check_shard_file(path: str | Path, wanted: ShardInfo | None) -> None:
    """Refuse an existing file made for another shard, before its rows are checked against this shard's images
    (which would only say that its images are not this shard's)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        found = read_annotation_file(path, ids=None, class_names=None).shard
    except LabelFileError:
        return  # the writer opening it reports what is wrong with it
    if found is not None and found != wanted:
        raise shard_mismatch(path, found, wanted)
