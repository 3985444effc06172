"""Facts about the reBEN (BigEarthNet v2.0) file format, in one place.

Both the synthetic generator and the reader import from here, so the embedded dataset and
the real files are guaranteed to agree on key names, band sizes, dtypes, class order and
normalisation statistics.
"""

from __future__ import annotations

from typing import Final

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

SPLITS: Final[tuple[str, ...]] = ("train", "validation", "test")
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
