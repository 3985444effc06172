"""Images for figures: any band set rendered as 8-bit RGB."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Sentinel-2 bands shown as red, green, blue (true colour).
RGB_BANDS: tuple[str, str, str] = ("B04", "B03", "B02")


def check_stretch(low: float, high: float) -> None:
    """Refuse percentiles that do not make a stretch (``0 <= low < high <= 100``)."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"stretch percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")


def percentile_stretch(bands: np.ndarray, low: float = 2.0, high: float = 98.0, flat: float = 0.5) -> np.ndarray:
    """``C x H x W`` values -> ``H x W x C`` uint8, each band stretched from its ``low`` to ``high`` percentile.

    Reflectances and backscatter have no fixed display range; clipping the extreme 2 % on either
    side per band is the usual way to show them. A flat band (both percentiles equal) is shown at
    ``flat`` (0 black, 0.5 mid-grey), not an error.
    """
    check_stretch(low, high)
    bands = np.asarray(bands, dtype=np.float64)
    if bands.ndim != 3:
        raise ValueError(f"bands must be C x H x W, got shape {bands.shape}")
    out = np.empty(bands.shape[1:] + (bands.shape[0],), dtype=np.uint8)
    for c, band in enumerate(bands):
        lo, hi = np.nanpercentile(band, [low, high])
        scaled = np.full(band.shape, flat) if hi <= lo else np.clip((band - lo) / (hi - lo), 0.0, 1.0)
        out[..., c] = np.round(255 * np.nan_to_num(scaled, nan=0.0)).astype(np.uint8)
    return out


def multispectral_rgb(bands: np.ndarray, band_names: Sequence[str]) -> np.ndarray:
    """True colour (B04, B03, B02) when the band set has them, else the first band in grey; ``H x W x 3`` uint8."""
    names = list(band_names)
    if all(b in names for b in RGB_BANDS):
        picked = bands[[names.index(b) for b in RGB_BANDS]]
    else:
        picked = np.repeat(bands[:1], 3, axis=0)
    return percentile_stretch(picked)
