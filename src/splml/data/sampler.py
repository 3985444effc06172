"""Training sampler whose order and augmentation draws depend only on (seed, epoch, index).

A resumed run must see exactly the batches and augmentations of an uninterrupted one, on one
process or many. Lightning calls ``set_epoch`` before every epoch; the permutation is drawn
from ``(seed, epoch)`` and every sample is yielded together with its own augmentation seed
``(seed, epoch, index)``, so neither depends on how much randomness was consumed before.
Under DDP each rank takes every ``world_size``-th element of the padded permutation, like
``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1 << 31, 1], dtype=np.uint64)))  # fmt: skip


def sample_item(
    key: int | tuple[int, int, bool],
    read_image: Callable[[int], Any],
    targets: np.ndarray,
    observed: np.ndarray,
    transform: Callable[..., dict[str, Any]] | None,
) -> dict[str, Any]:
    """One sample in the batch contract, for a key from :class:`EpochSeededSampler` (or a plain index).

    ``image`` (as ``read_image`` returns it), ``target`` (full labels), ``observed``, ``index``
    and ``padded``; then ``transform(item, generator=...)`` with the generator seeded from the
    key's augmentation seed, so the draws depend on (seed, epoch, index) only.
    """
    i, aug_seed, padded = key if isinstance(key, tuple) else (key, None, False)
    item: dict[str, Any] = {
        "image": read_image(i),
        "target": torch.from_numpy(targets[i].astype(np.float32)),
        "observed": torch.from_numpy(observed[i]),
        "index": i,
        "padded": padded,
    }
    if transform is not None:
        generator = torch.Generator().manual_seed(aug_seed) if aug_seed is not None else None
        item = transform(item, generator=generator)
    return item


class EpochSeededSampler(Sampler[tuple[int, int, bool]]):
    """Yields ``(index, augmentation seed, padded)``; shuffled per epoch; split across ranks.

    ``padded`` marks the repeats that make every rank's share equally long; per-sample stores
    skip them so that every sample updates a store exactly once per epoch.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.n = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(self.n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        while len(order) < total:  # pad by repeating the first samples, as DistributedSampler does
            order += order[: total - len(order)]
        for position in range(self.rank, total, self.world_size):
            i = order[position]
            yield i, item_seed(self.seed, self.epoch, i), position >= self.n
