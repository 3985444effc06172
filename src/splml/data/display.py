"""Images for figures: any band set rendered as 8-bit RGB."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Sentinel-2 bands shown as red, green, blue (true colour).
RGB_BANDS: tuple[str, str, str] = ("B04", "B03", "B02")


def percentile_stretch(bands: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """``C x H x W`` values -> ``H x W x C`` uint8, each band stretched from its ``low`` to ``high`` percentile.

    Reflectances and backscatter have no fixed display range; clipping the extreme 2 % on either
    side per band is the usual way to show them (a flat band becomes mid-grey, not an error).
    """
    bands = np.asarray(bands, dtype=np.float64)
    if bands.ndim != 3:
        raise ValueError(f"bands must be C x H x W, got shape {bands.shape}")
    out = np.empty(bands.shape[1:] + (bands.shape[0],), dtype=np.uint8)
    for c, band in enumerate(bands):
        lo, hi = np.nanpercentile(band, [low, high])
        scaled = np.full(band.shape, 0.5) if hi <= lo else np.clip((band - lo) / (hi - lo), 0.0, 1.0)
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
