"""Facts about the reBEN (BigEarthNet v2.0) file format, in one place.

The writer, the reader and the verification import from here, so the embedded dataset and
the real files are guaranteed to agree on key names, band sizes, dtypes, class order and
normalisation statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

#: The 19 classes in the nomenclature's original order. Label vectors use THIS order
#: (not alphabetical); results and checkpoints record it as ``class_order: original``.
CLASS_NAMES: Final[tuple[str, ...]] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
NUM_CLASSES: Final[int] = len(CLASS_NAMES)
CLASS_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(CLASS_NAMES)}

#: CORINE Land Cover level-3 code -> class index (in CLASS_NAMES order).
CLC_TO_CLASS: Final[dict[int, int]] = {
    111: 0, 112: 0,
    121: 1,
    211: 2, 212: 2, 213: 2,
    221: 3, 222: 3, 223: 3, 241: 3,
    231: 4,
    242: 5,
    243: 6,
    244: 7,
    311: 8,
    312: 9,
    313: 10,
    321: 11, 333: 11,
    322: 12, 323: 12,
    324: 13,
    331: 14,
    411: 15, 412: 15,
    421: 16, 422: 16,
    511: 17, 512: 17,
    521: 18, 522: 18, 523: 18,
}  # fmt: skip
#: CLC codes that exist in the maps but belong to no reBEN class; their pixels are ignored.
UNLABELED_CLC: Final[frozenset[int]] = frozenset({0, 122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999})

#: Sentinel-2 bands stored per patch, with their native side length in pixels.
S2_BAND_SIZES: Final[dict[str, int]] = {
    "B02": 120, "B03": 120, "B04": 120, "B08": 120,
    "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60, "B12": 60,
    "B01": 20, "B09": 20,
}  # fmt: skip
S1_BANDS: Final[tuple[str, ...]] = ("VV", "VH")
PATCH_SIZE: Final[int] = 120
REFERENCE_MAP_SUFFIX: Final[str] = "_reference_map"
REFERENCE_MAP_TENSOR: Final[str] = "Data"

_S2_10_20: Final[tuple[str, ...]] = (
    "B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12",
)  # fmt: skip
#: Named band sets; order inside a set is the channel order of the model input.
BAND_SETS: Final[dict[str, tuple[str, ...]]] = {
    "s2": _S2_10_20,
    "s1": S1_BANDS,
    "all": S1_BANDS + _S2_10_20,
    "rgb": ("B04", "B03", "B02"),
    "s2_full": _S2_10_20 + ("B01", "B09"),
    "all_full": S1_BANDS + _S2_10_20 + ("B01", "B09"),
}

#: Official per-band statistics (train split, 120 px, nearest upsampling).
BAND_STATS: Final[dict[str, tuple[float, float]]] = {
    "B01": (361.08, 575.07),
    "B02": (438.37, 607.03),
    "B03": (614.06, 603.30),
    "B04": (588.41, 684.57),
    "B05": (942.84, 738.43),
    "B06": (1769.93, 1100.46),
    "B07": (2049.55, 1275.81),
    "B08": (2193.29, 1369.37),
    "B8A": (2235.56, 1356.54),
    "B09": (2241.46, 1316.39),
    "B11": (1568.23, 1070.16),
    "B12": (997.73, 813.53),
    "VH": (-19.353, 5.5905),
    "VV": (-12.644, 5.1335),
}

#: Raw values accepted per modality, inclusive (``dataset.datamodule.value_range``; None = unchecked).
#: Values outside are a corrupt or mis-encoded file, not land cover: a radar value of 1e30 dB
#: trains silently (normalised to ~2e29) and wrecks the batch statistics. S2 is L2A reflectance
#: x 10000 in uint16: its default is the whole uint16 range (bright clouds and snow exceed
#: 10000 and the scale has an offset since processing baseline 04.00), so by default it costs
#: nothing and only a stricter range set by the user checks it. S1 is backscatter in dB, about
#: -35..+10 in practice (mean -12.6 / -19.4, std about 5.5 for VV / VH); -100 dB is a linear
#: sigma0 of 1e-10 and +60 dB one of 1e6, both about 15 standard deviations out and physically
#: meaningless, so the default only rejects what cannot be a measurement.
VALUE_RANGES: Final[dict[str, tuple[float, float] | None]] = {"s2": (0, 65535), "s1": (-100.0, 60.0)}
#: What each modality's values are, for messages.
VALUE_UNITS: Final[dict[str, str]] = {"s2": "(reflectance x 10000)", "s1": "dB"}

SPLITS: Final[tuple[str, ...]] = ("train", "validation", "test")
#: The three kinds of LMDB value: a patch's Sentinel-2 bands, its Sentinel-1 bands, its reference map.
KeyKind = Literal["s2", "s1", "map"]
METADATA_FILE: Final[str] = "metadata.parquet"
SNOW_CLOUD_METADATA_FILE: Final[str] = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
#: Column name -> arrow type name, as in the official metadata.parquet.
METADATA_COLUMNS: Final[dict[str, str]] = {
    "patch_id": "string",
    "labels": "list<string>",
    "split": "string",
    "country": "string",
    "s1_name": "string",
    "s2v1_name": "string",
    "contains_seasonal_snow": "bool",
    "contains_cloud_or_shadow": "bool",
}


def resolve_band_set(bands: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Return the tuple of band names for a named set or an explicit list, validating names."""
    if isinstance(bands, str):
        if bands not in BAND_SETS:
            raise ValueError(
                f"unknown band set {bands!r}; choose one of {sorted(BAND_SETS)} or give an explicit list of band names"
            )
        return BAND_SETS[bands]
    names = tuple(bands)
    unknown = [b for b in names if b not in S2_BAND_SIZES and b not in S1_BANDS]
    if unknown:
        raise ValueError(f"unknown band name(s) {unknown}; valid bands are {sorted(S2_BAND_SIZES) + list(S1_BANDS)}")
    if not names:
        raise ValueError("the band list is empty")
    return names


def resolve_value_range(
    value_range: Mapping[str, Sequence[float] | None] | None,
) -> dict[str, tuple[float, float] | None]:
    """Accepted (low, high) per modality: ``value_range`` over :data:`VALUE_RANGES`; None disables every check.

    ``{"s1": None}`` turns off the S1 range only (NaN and inf stay errors); ``{"s2": [0, 20000]}``
    sets a stricter S2 range and keeps the S1 default.
    """
    if value_range is None:
        return dict.fromkeys(VALUE_RANGES)
    unknown = [k for k in value_range if k not in VALUE_RANGES]
    if unknown:
        raise ValueError(
            f"value_range: unknown modality {unknown[0]!r}; the keys are {sorted(VALUE_RANGES)} "
            "(each [low, high] or null)"
        )
    out = dict(VALUE_RANGES)
    for modality, bounds in value_range.items():
        if bounds is None:
            out[modality] = None
            continue
        pair = list(bounds) if isinstance(bounds, Sequence) and not isinstance(bounds, str) else None
        if (
            pair is None
            or len(pair) != 2
            or not all(isinstance(v, (int, float)) for v in pair)
            or not pair[0] <= pair[1]
        ):
            raise ValueError(
                f"value_range.{modality}={pair if pair is not None else bounds!r}: expected [low, high] with "
                "low <= high, or null to skip the check"
            )
        out[modality] = (pair[0], pair[1])
    return out


def class_indices(names: list[str] | tuple[str, ...], *, where: str) -> list[int]:
    """Map class names to indices in the original order; ``where`` names the offending item."""
    out = []
    for name in names:
        try:
            out.append(CLASS_INDEX[name])
        except KeyError:
            raise ValueError(
                f"{where}: unknown class name {name!r}; it is not one of the {NUM_CLASSES} reBEN classes"
            ) from None
    return out


def expected_tensors(kind: KeyKind) -> dict[str, tuple[int, type]]:
    """Tensor name -> (side length, dtype) of one kind of value, as the reader expects them."""
    if kind == "s2":
        return {b: (s, np.uint16) for b, s in S2_BAND_SIZES.items()}
    if kind == "s1":
        return {b: (PATCH_SIZE, np.float32) for b in S1_BANDS}
    return {REFERENCE_MAP_TENSOR: (PATCH_SIZE, np.uint16)}


@dataclass(frozen=True)
class PatchKeys:
    """The LMDB keys of one patch: ``patch_id`` (S2), ``s1_name`` (S1), ``patch_id + "_reference_map"``."""

    patch_id: str
    s1_name: str

    @property
    def map_key(self) -> str:
        return self.patch_id + REFERENCE_MAP_SUFFIX

    def keys(self, with_maps: bool) -> list[tuple[str, KeyKind]]:
        keys: list[tuple[str, KeyKind]] = [(self.patch_id, "s2"), (self.s1_name, "s1")]
        if with_maps:
            keys.append((self.map_key, "map"))
        return keys

    def values(
        self, s2: dict[str, np.ndarray], s1: dict[str, np.ndarray], reference_map: np.ndarray | None = None
    ) -> dict[str, dict[str, np.ndarray]]:
        """The LMDB entries of this patch, ``{key: {tensor name: array}}``, as the writer takes them."""
        entries = {self.patch_id: s2, self.s1_name: s1}
        if reference_map is not None:
            entries[self.map_key] = {REFERENCE_MAP_TENSOR: reference_map}
        return entries
