"""One split of reBEN-format data (the real files or the embedded synthetic set) as a torch Dataset.

The bytes come from the one reader of the format, :class:`splml.io.reben.reader.ReBENReader`
(views of the LMDB pages, no copy); this module turns them into model inputs: band selection,
normalisation with the official statistics and upsampling to ``image_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F

from splml.data.display import multispectral_rgb
from splml.data.sampler import sample_item
from splml.io.errors import DataFormatError
from splml.io.reben.format import (
    BAND_STATS,
    CLASS_NAMES,
    METADATA_FILE,
    PATCH_SIZE,
    S1_BANDS,
    S2_BAND_SIZES,
    SPLITS,
    VALUE_RANGES,
    resolve_band_set,
    resolve_value_range,
)
from splml.io.reben.lmdb import find_lmdb_dir
from splml.io.reben.metadata import PatchRecord, labels_to_multihot, read_metadata
from splml.io.reben.reader import ReBENReader
from splml.io.reben.values import covers_dtype, value_problem


@dataclass(frozen=True)
class _BandGroup:
    """Bands of one LMDB value with the same native size, read and resized together."""

    names: tuple[str, ...]
    native: int
    positions: slice | np.ndarray  # where they go in the output (a slice when contiguous)
    mean: np.ndarray  # (k, 1, 1) float32
    std: np.ndarray


def _band_groups(bands: Sequence[str], names: Sequence[str], native_size: dict[str, int]) -> list[_BandGroup]:
    groups = []
    for native in sorted({native_size[b] for b in names}, reverse=True):
        members = tuple(b for b in names if native_size[b] == native)
        index = np.array([list(bands).index(b) for b in members])
        contiguous = bool((np.diff(index) == 1).all())
        positions = slice(int(index[0]), int(index[-1]) + 1) if contiguous else index
        mean = np.array([BAND_STATS[b][0] for b in members], dtype=np.float32).reshape(-1, 1, 1)
        std = np.array([BAND_STATS[b][1] for b in members], dtype=np.float32).reshape(-1, 1, 1)
        groups.append(_BandGroup(members, native, positions, mean, std))
    return groups


def _repeat_into(dst: np.ndarray, bands: np.ndarray, factor: int) -> None:
    """Nearest upsampling by an integer ``factor``: ``dst`` (k x S x S) from ``bands`` (k x s x s).

    Rows are repeated with ``np.repeat`` (contiguous row copies); columns by ``factor`` strided
    assignments, which is about 3x faster than repeating along the last axis element by element.
    """
    rows = bands.repeat(factor, axis=1)
    columns = dst.reshape(dst.shape[0], dst.shape[1], bands.shape[2], factor)
    for j in range(factor):
        columns[..., j] = rows


class ReBENDataset(torch.utils.data.Dataset):
    """One split of reBEN: multispectral patches with their full and observed labels.

    Each item is a dict following the batch contract of :mod:`splml.methods.base`:
    ``image`` (C x S x S float32, normalised with the official statistics), ``target`` (full
    labels), ``observed`` (the simulated or annotated labels; full labels if none are set),
    ``index`` (position in this split) and, when a spatial transform is set, ``aug``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        bands: str | Sequence[str] = "all",
        image_size: int = PATCH_SIZE,
        upsampling: str = "nearest",
        normalize: bool = True,
        include_snow_cloud: bool = False,
        lmdb_path: str | Path | None = None,
        metadata_path: str | Path | None = None,
        transform: Any = None,
        records: Sequence[PatchRecord] | None = None,
        value_range: dict[str, Sequence[float] | None] | None = VALUE_RANGES,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; reBEN splits are {SPLITS} (note: 'validation', not 'val')")
        if upsampling not in ("nearest", "bilinear"):
            raise ValueError(f"upsampling must be 'nearest' or 'bilinear', got {upsampling!r}")
        self.root = Path(root)
        self.split = split
        self.bands = resolve_band_set(bands)
        self.image_size = int(image_size)
        self.upsampling = upsampling
        self.normalize = normalize
        self.transform = transform
        self.lmdb_path = Path(lmdb_path) if lmdb_path else find_lmdb_dir(self.root)
        self.metadata_path = Path(metadata_path) if metadata_path else self.root / METADATA_FILE
        if records is None:
            records = read_metadata(self.metadata_path, include_snow_cloud=include_snow_cloud)[split]
        self.records: list[PatchRecord] = list(records)
        if not self.records:
            raise DataFormatError(f"{self.metadata_path}: split {split!r} has no patches")
        self.targets = labels_to_multihot(self.records)
        self.observed: np.ndarray = self.targets.astype(np.float32)
        self._s2_bands = [b for b in self.bands if b in S2_BAND_SIZES]
        self._s1_bands = [b for b in self.bands if b in S1_BANDS]
        native_size = {**S2_BAND_SIZES, **dict.fromkeys(S1_BANDS, PATCH_SIZE)}
        self._s2_groups = _band_groups(self.bands, self._s2_bands, native_size)
        self._s1_groups = _band_groups(self.bands, self._s1_bands, native_size)
        self.value_range = resolve_value_range(value_range)
        # S2 values are uint16: a range covering all of uint16 needs no check on the hot path.
        self._bounds = {
            "s2": None if covers_dtype(self.value_range["s2"], np.uint16) else self.value_range["s2"],
            "s1": self.value_range["s1"],
        }
        # Fails now, naming the file, if data.mdb is truncated (the handle is cached per process,
        # not kept in the dataset, so the dataset still pickles for spawned workers).
        self.reader = ReBENReader(self.lmdb_path)

    # -- LMDB access -------------------------------------------------------------------------
    def read_reference_map(self, i: int) -> np.ndarray:
        """The 120 x 120 CLC-coded reference map of patch ``i`` (uint16)."""
        return self.reader.reference_map(self.records[i].patch_id)

    def read_bands(self, i: int, normalize: bool = False) -> torch.Tensor:
        """Decode, upsample and stack the selected bands of patch ``i`` (C x S x S float32).

        Raw units, or normalised with the official statistics when ``normalize``. Bands are read
        as views of the LMDB page (no copy of the value) and handled per native size: stacked,
        normalised at their native resolution, before resizing (nearest, bilinear and area
        resizing average with weights that sum to 1, so they commute with the per-band affine
        normalisation, and a 60 x 60 band costs a quarter of the arithmetic), then resized:
        integer-factor nearest upsampling is a ``repeat``, any other resize one ``interpolate``.
        """
        rec = self.records[i]
        size = self.image_size
        out = np.empty((len(self.bands), size, size), dtype=np.float32)
        with self.reader.begin() as txn:
            for key, dtype, groups, modality in (
                (rec.patch_id, np.uint16, self._s2_groups, "s2"),
                (rec.s1_name, np.float32, self._s1_groups, "s1"),
            ):
                if not groups:
                    continue
                arrays = self.reader.bands(
                    key, self.reader.views(txn, key), [b for g in groups for b in g.names], dtype
                )
                bounds = self._bounds[modality]
                for g in groups:
                    stack = np.stack([arrays[b] for b in g.names])
                    # One min and one max per band group (NaN fails both comparisons, inf one).
                    if bounds is not None:
                        if not bounds[0] <= stack.min() or not stack.max() <= bounds[1]:
                            self._raise_bad_values(rec, key, modality, arrays, g.names)
                    elif stack.dtype.kind == "f" and not np.isfinite(stack).all():
                        self._raise_bad_values(rec, key, modality, arrays, g.names)
                    direct = isinstance(g.positions, slice)
                    dst = out[g.positions] if direct else np.empty((len(g.names), size, size), np.float32)
                    if normalize:
                        if g.native == size:  # cast, shift and scale straight into the output
                            stack = np.subtract(stack, g.mean, out=dst, dtype=np.float32, casting="unsafe")
                        else:
                            stack = np.subtract(stack, g.mean, dtype=np.float32)
                        stack /= g.std
                    if g.native == size:
                        if stack is not dst:
                            dst[...] = stack
                    elif self.upsampling == "nearest" and size % g.native == 0:
                        _repeat_into(dst, stack, size // g.native)
                    else:
                        mode = self.upsampling if g.native < size else "area"
                        kwargs = {"align_corners": False} if mode == "bilinear" else {}
                        x = torch.from_numpy(stack.astype(np.float32, copy=False))[None]
                        dst[...] = F.interpolate(x, size=(size, size), mode=mode, **kwargs)[0].numpy()
                    if not direct:
                        out[g.positions] = dst
        return torch.from_numpy(out)

    def _raise_bad_values(
        self, rec: PatchRecord, key: str, modality: str, arrays: dict[str, np.ndarray], bands: Sequence[str]
    ) -> NoReturn:
        """Name the first band of ``bands`` with a non-finite or out-of-range value (called on failure only)."""
        for b in bands:
            problem = value_problem(arrays[b], self._bounds[modality], modality)
            if problem is not None:
                where = f"patch {key!r}" if key == rec.patch_id else f"patch {rec.patch_id} (key {key!r})"
                hint = (
                    f"; if such values are real, widen dataset.datamodule.value_range.{modality} "
                    "(or set it to null to skip the check)"
                    if np.isfinite(arrays[b]).all()  # finite values failed: they lie outside the range
                    else ""
                )
                raise DataFormatError(f"{self.lmdb_path}: {where}, band {b} {problem}{hint}")
        raise DataFormatError(  # the group check failed, so some band must have: never read on silently
            f"{self.lmdb_path}: patch {rec.patch_id} (key {key!r}): bands {list(bands)} failed the value check"
        )

    # -- Dataset protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        # The sampler yields (index, augmentation seed, padded); plain indices also work.
        return sample_item(
            key, lambda i: self.read_bands(i, normalize=self.normalize), self.targets, self.observed, self.transform
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def ids(self) -> list[str]:
        """The patch ids of this split, in order."""
        return [r.patch_id for r in self.records]

    def display_image(self, i: int) -> np.ndarray:
        """Patch ``i`` as an ``H x W x 3`` uint8 picture (true colour with a percentile stretch; figures only)."""
        return multispectral_rgb(self.read_bands(i, normalize=False).numpy(), self.bands)

    def set_observed(self, observed: np.ndarray) -> None:
        """Install observed labels (N x 19, values in {-1, 0, 1}); validated against the split size."""
        observed = np.asarray(observed, dtype=np.float32)
        if observed.shape != self.targets.shape:
            raise ValueError(
                f"observed labels have shape {observed.shape}, expected {self.targets.shape} "
                f"for split {self.split!r} of {self.metadata_path}"
            )
        bad = ~np.isin(observed, (-1.0, 0.0, 1.0))
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise ValueError(
                f"observed labels must be -1, 0 or 1; row {row} (patch {self.records[row].patch_id}) "
                f"has {observed[row].tolist()}"
            )
        self.observed = observed
