"""One synthetic reBEN patch: its header (place, date, flags) and its scene (map, labels, S2, S1).

The header of patch ``j`` of split ``s`` comes from ``SeedSequence([seed, s, j])`` and its pixels
from the same sequence, so a patch does not depend on the order of generation or on the other
splits' sizes. The constant tables live in :mod:`splml.data.synthetic.tables`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np

from splml.data.synthetic.config import MIN_LABEL_PIXELS, SyntheticConfig
from splml.data.synthetic.tables import (
    BANDS,
    CLASS_CODES,
    CLOUD_SPECTRUM,
    COUNTRY_TILES,
    EM,
    EM_S1_LIN,
    EM_SPECTRA,
    HAZE_WEIGHT,
    LANDSCAPE_PROBS,
    LANDSCAPES,
    N_EM,
    N_RENDER,
    OVERLAY_CODES,
    POS_HI,
    POS_LO,
    PRODUCTS,
    PRODUCTS_PER_TILE,
    RECIPES,
    SHORE_CLASSES,
    SNOW_SPECTRUM,
    Landscape,
    Product,
)
from splml.io.reben.format import (
    CLASS_INDEX,
    NUM_CLASSES,
    PATCH_SIZE,
    S1_BANDS,
    S2_BAND_SIZES,
    SPLITS,
)

_N: Final[int] = PATCH_SIZE
_NPIX: Final[int] = _N * _N
_MAX_LABELS: Final[int] = 11


class PatchHeader(NamedTuple):
    """Everything about a patch except its pixels; decided in a cheap first pass."""

    split: str
    index: int
    landscape: int
    country: str
    product: Product
    x: int
    y: int
    snow: bool
    cloud: bool

    @property
    def patch_id(self) -> str:
        p = self.product
        return f"{p.s2_sat}_MSIL2A_{p.s2_time}_N9999_R{p.orbit:03d}_T{p.tile}_{self.x}_{self.y}"

    @property
    def s1_name(self) -> str:
        p = self.product
        return f"{p.s1_sat}_IW_GRDH_1SDV_{p.s1_time}_{p.tile}_{self.x}_{self.y}"

    @property
    def s2v1_name(self) -> str:
        p = self.product
        return f"{p.s2_sat}_MSIL2A_{p.s2_time}_{self.x}_{self.y}"


def _patch_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of one patch: independent of generation order and of the other splits' sizes."""
    return np.random.SeedSequence([seed, SPLITS.index(split), index])


def _winterness(month: int) -> float:
    """0 in July, 1 in January: drives leaf-off, senescence and snow."""
    return float(0.5 * (1.0 + np.cos(2.0 * np.pi * (month - 1) / 12.0)))


def plan_headers(cfg: SyntheticConfig) -> list[PatchHeader]:
    """Draw landscape, place and flags for every patch; resolve grid collisions in a fixed order."""
    headers: list[PatchHeader] = []
    used: set[tuple[str, str, int, int]] = set()
    span = POS_HI - POS_LO + 1
    for split, count in cfg.split_counts().items():
        for j in range(count):
            rng = np.random.default_rng(_patch_seed(cfg.seed, split, j).spawn(1)[0])
            li = int(rng.choice(len(LANDSCAPES), p=LANDSCAPE_PROBS))
            ls = LANDSCAPES[li]
            country = ls.countries[int(rng.integers(len(ls.countries)))]
            tiles = COUNTRY_TILES[country]
            tile = tiles[int(rng.integers(len(tiles)))]
            product = PRODUCTS[tile][int(rng.integers(PRODUCTS_PER_TILE))]
            pos = int(rng.integers(span * span))
            while (tile, product.s2_time, *divmod(pos, span)) in used:
                pos = (pos + 1) % (span * span)
            gx, gy = divmod(pos, span)
            used.add((tile, product.s2_time, gx, gy))
            winter = _winterness(product.month)
            snow = bool(rng.random() < 0.012 + ls.snow_prob * winter**2)
            cloud = bool(rng.random() < 0.03)
            headers.append(PatchHeader(split, j, li, country, product, gx + POS_LO, gy + POS_LO, snow, cloud))
    return headers


# --------------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------------
_FIELD_SIGMAS: Final[tuple[float, ...]] = (
    10.0, 10.0,  # domain warp x, y
    1.0, 3.5, 10.0,  # pattern: fine, medium, coarse
    0.7, 3.0, 10.0,  # texture: fine, medium, coarse
    12.0,  # snow / cloud cover
)  # fmt: skip


def _gaussian_transfer() -> np.ndarray:
    fy = np.fft.fftfreq(_N)[:, None]
    fx = np.fft.rfftfreq(_N)[None, :]
    r2 = fy**2 + fx**2
    sig = np.array(_FIELD_SIGMAS)[:, None, None]
    return np.exp(-2.0 * np.pi**2 * sig**2 * r2).astype(np.complex64)


_TRANSFER: Final[np.ndarray] = _gaussian_transfer()
_YY, _XX = (a.astype(np.float32) for a in np.mgrid[0:_N, 0:_N])


def _smooth_fields(rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random fields at the scales of _FIELD_SIGMAS (periodic, via FFT)."""
    white = rng.standard_normal((len(_FIELD_SIGMAS), _N, _N), dtype=np.float32)
    fields = np.fft.irfft2(np.fft.rfft2(white) * _TRANSFER, s=(_N, _N)).astype(np.float32)
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-6
    return fields


class Scene(NamedTuple):
    codes: np.ndarray  # (120, 120) uint16 CLC codes
    labels: list[int]  # class indices, ascending
    s2: dict[str, np.ndarray]
    s1: dict[str, np.ndarray]


def _choose_classes(rng: np.random.Generator, ls: Landscape) -> tuple[np.ndarray, np.ndarray]:
    """Pick the classes of a patch and their target area shares."""
    names = list(ls.weights)
    w = np.array([ls.weights[n] for n in names], dtype=np.float64)
    k = int(min(1 + rng.poisson(2.0), _MAX_LABELS, len(names)))
    chosen: list[int] = []
    if ls.anchor is not None and rng.random() < ls.anchor_prob:
        chosen.append(names.index(ls.anchor))
    # weighted sampling without replacement (Gumbel top-k)
    keys = np.log(w) + rng.gumbel(size=len(w))
    for i in np.argsort(-keys):
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    classes = np.array([CLASS_INDEX[names[i]] for i in chosen], dtype=np.int64)
    shares = rng.gamma(1.2, size=len(chosen)) * np.sqrt(w[chosen])
    if ls.anchor is not None and chosen and chosen[0] == names.index(ls.anchor):
        shares[0] = max(shares[0], shares.sum() * 0.4)  # the sea / the town is large
    return classes, shares / shares.sum()


def _layout(
    rng: np.random.Generator, ls: Landscape, classes: np.ndarray, shares: np.ndarray, fields: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Region map: a warped power diagram. Returns (cell id per pixel, class per cell)."""
    n_cells = 1 + rng.poisson(2.0 * shares * len(classes))
    cell_class = np.repeat(classes, n_cells)
    area = np.repeat(shares / n_cells, n_cells) * _NPIX
    m = len(cell_class)
    seeds = rng.uniform(-15.0, _N + 15.0, size=(m, 2)).astype(np.float32)
    side = int(rng.integers(4))  # the coast / the town centre side
    anchor = CLASS_INDEX[ls.anchor] if ls.anchor is not None else -1
    for i in range(m):
        c = int(cell_class[i])
        if c == anchor and ls.name == "coastal":
            depth = rng.uniform(-70.0, -20.0)
        elif c in SHORE_CLASSES and ls.name == "coastal":
            depth = rng.uniform(-5.0, 35.0)
        else:
            continue
        along = rng.uniform(0.0, _N)
        seeds[i] = _edge_point(side, depth, along)
    weight = (area / np.pi * rng.uniform(0.7, 1.4, size=m)).astype(np.float32)
    # coastal anchors sit outside the patch: grow their weight by their distance to it
    if ls.name == "coastal":
        outside = np.clip(-np.minimum(seeds.min(1), _N - seeds.max(1)), 0.0, None)
        weight += (outside * (outside + 2.0 * np.sqrt(weight))) * (cell_class == anchor)
    px = (_XX + ls.warp * fields[0]).ravel()
    py = (_YY + ls.warp * fields[1]).ravel()
    d = (px[None, :] - seeds[:, 0:1]) ** 2 + (py[None, :] - seeds[:, 1:2]) ** 2 - weight[:, None]
    return d.argmin(0).astype(np.int64), cell_class


def _edge_point(side: int, depth: float, along: float) -> np.ndarray:
    """A point ``depth`` pixels inside (negative: outside) edge ``side`` at position ``along``."""
    if side == 0:
        return np.array([along, depth], dtype=np.float32)
    if side == 1:
        return np.array([along, _N - 1 - depth], dtype=np.float32)
    if side == 2:
        return np.array([depth, along], dtype=np.float32)
    return np.array([_N - 1 - depth, along], dtype=np.float32)


def _overlay(rng: np.random.Generator, ls: Landscape, fields: np.ndarray) -> np.ndarray:
    """Unlabeled CLC codes on top of the regions (0 where none): roads, quarries, rock, no-data."""
    over = np.zeros(_NPIX, dtype=np.int64)
    if rng.random() < ls.road_prob:
        theta = rng.uniform(0.0, np.pi)
        offset = rng.uniform(20.0, _N - 20.0)
        dist = np.abs((_XX - _N / 2) * np.sin(theta) - (_YY - _N / 2) * np.cos(theta) + (offset - _N / 2))
        over[(dist.ravel() < rng.uniform(0.6, 1.3))] = 122
    blob_code = 0
    u = rng.random()
    if ls.name == "mountain" and u < 0.3:
        blob_code = 332
    elif u < 0.04:
        blob_code = 131
    elif u < 0.05:
        blob_code = 999
    if blob_code:
        frac = rng.uniform(0.01, 0.08)
        f = fields[4].ravel()
        thr = np.quantile(f, 1.0 - frac)
        over[f >= thr] = blob_code
    return over


def _merge_small_classes(cell_id: np.ndarray, cell_class: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """Merge classes below MIN_LABEL_PIXELS into the neighbour they share most border with.

    After this, every class present in the map (outside the overlay) holds at least
    MIN_LABEL_PIXELS pixels, so "label set == classes with enough pixels" holds exactly.
    """
    m = len(cell_class)
    labelled = overlay == 0
    cell_pixels = np.bincount(cell_id[labelled], minlength=m).astype(np.int64)
    grid = cell_id.reshape(_N, _N)
    pairs = np.concatenate(
        [
            np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()]),
            np.stack([grid[:-1, :].ravel(), grid[1:, :].ravel()]),
        ],
        axis=1,
    )
    pairs = pairs[:, pairs[0] != pairs[1]]
    adjacency = np.bincount(pairs[0] * m + pairs[1], minlength=m * m).reshape(m, m)
    adjacency = adjacency + adjacency.T
    cell_class = cell_class.copy()
    while True:
        counts = np.bincount(cell_class, weights=cell_pixels, minlength=NUM_CLASSES)
        small = np.flatnonzero((counts > 0) & (counts < MIN_LABEL_PIXELS))
        if small.size == 0:
            return cell_class
        c = int(small[np.argmin(counts[small])])
        members = cell_class == c
        border = adjacency[members].sum(0)  # border length with every cell
        border[members] = 0
        per_class = np.bincount(cell_class, weights=border, minlength=NUM_CLASSES)
        per_class[c] = 0
        if per_class.max() > 0:
            target = int(np.argmax(per_class))
        else:  # no labelled neighbour at all: join the largest other class
            others = counts.copy()
            others[c] = -1
            target = int(np.argmax(others))
        cell_class[members] = target


def generate_scene(header: PatchHeader, cfg: SyntheticConfig) -> Scene:
    """Map, labels, Sentinel-2 and Sentinel-1 pixels of one patch (pure function of its seed)."""
    rng = np.random.default_rng(_patch_seed(cfg.seed, header.split, header.index).spawn(2)[1])
    ls = LANDSCAPES[header.landscape]
    hard = float(cfg.difficulty)
    fields = _smooth_fields(rng)

    # ---- reference map --------------------------------------------------------------------
    classes, shares = _choose_classes(rng, ls)
    cell_id, cell_class = _layout(rng, ls, classes, shares, fields)
    overlay = _overlay(rng, ls, fields)
    cell_class = _merge_small_classes(cell_id, cell_class, overlay)
    m = len(cell_class)
    cell_code = np.empty(m, dtype=np.int64)
    for i, c in enumerate(cell_class):
        codes, probs = CLASS_CODES[int(c)]
        cell_code[i] = codes[rng.choice(len(codes), p=probs)]
    pix_class = cell_class[cell_id]
    codes = np.where(overlay > 0, overlay, cell_code[cell_id])
    counts = np.bincount(pix_class[overlay == 0], minlength=NUM_CLASSES)
    labels = [int(c) for c in np.flatnonzero(counts >= MIN_LABEL_PIXELS)]
    render = pix_class.copy()
    for k, code in enumerate(OVERLAY_CODES):
        render[overlay == code] = NUM_CLASSES + k

    # ---- abundances ----------------------------------------------------------------------
    winter = _winterness(header.product.month)
    u_cell = rng.random(m).astype(np.float32)
    theta = rng.uniform(0.0, np.pi, size=m).astype(np.float32)
    period = rng.uniform(3.0, 6.0, size=m).astype(np.float32)
    ang = theta[cell_id]
    stripes = np.sin(2.0 * np.pi * (_XX.ravel() * np.cos(ang) + _YY.ravel() * np.sin(ang)) / period[cell_id]).astype(
        np.float32
    )
    sources = np.stack(
        [
            u_cell[cell_id],
            _parcels(rng),
            fields[2].ravel(),
            fields[3].ravel(),
            fields[4].ravel(),
            stripes,
            np.zeros(_NPIX, dtype=np.float32),
        ]
    )
    tex_sources = np.stack(
        [
            np.zeros(_NPIX, dtype=np.float32),
            np.zeros(_NPIX, dtype=np.float32),
            fields[5].ravel(),
            fields[6].ravel(),
            fields[7].ravel(),
            stripes,
            np.zeros(_NPIX, dtype=np.float32),
        ]
    )
    arange = np.arange(_NPIX)
    centre_jitter = rng.normal(0.0, 0.5, size=m).astype(np.float32)
    src = sources[RECIPES["pattern"][render], arange]
    mix = 1.0 / (1.0 + np.exp(-RECIPES["gain"][render] * (src - RECIPES["centre"][render] - centre_jitter[cell_id])))
    texture = 1.0 + RECIPES["texture_amp"][render] * tex_sources[RECIPES["texture"][render], arange]
    # Abundances are (1 - mix) * a0 + mix * a1, scaled by a per-region jitter and renormalised.
    # Everything but `mix` is constant over a (region, render class) pair, so the spectra are
    # mixed once per pair and only blended per pixel (cheap, and no large BLAS calls).
    pair_ids, pair_of_pixel = np.unique(cell_id * N_RENDER + render, return_inverse=True)
    pair_cell, pair_render = np.divmod(pair_ids, N_RENDER)
    ab_jitter = np.exp(rng.normal(0.0, 0.3 * hard, size=(m, N_EM))).astype(np.float32)
    p0 = RECIPES["a0"][pair_render] * ab_jitter[pair_cell]  # (pairs, E)
    p1 = RECIPES["a1"][pair_render] * ab_jitter[pair_cell]
    w1 = mix.astype(np.float32)
    w0 = 1.0 - w1
    norm = w0 * p0.sum(1)[pair_of_pixel] + w1 * p1.sum(1)[pair_of_pixel]

    # ---- Sentinel-2 ----------------------------------------------------------------------
    spectra = EM_SPECTRA.copy()
    senescence = np.clip(0.45 * winter + rng.normal(0.0, 0.08 * hard), 0.0, 0.8)
    leaf_off = np.clip(0.7 * winter + rng.normal(0.0, 0.08 * hard), 0.0, 0.9)
    spectra[EM["green"]] = (1 - senescence) * spectra[EM["green"]] + senescence * spectra[EM["dry"]]
    bare_crown = 0.5 * spectra[EM["dry"]] + 0.3 * spectra[EM["soil"]] + 0.2 * spectra[EM["shadow"]]
    spectra[EM["broad"]] = (1 - leaf_off) * spectra[EM["broad"]] + leaf_off * bare_crown
    band_jitter = np.exp(rng.normal(0.0, 0.06 * hard, size=(m, len(BANDS)))).astype(np.float32)
    illumination = np.exp(rng.normal(0.0, 0.1 * hard)) * np.exp(rng.normal(0.0, 0.05 * hard, size=len(BANDS)))
    gain = (band_jitter[pair_cell] * (illumination * (1.0 - 0.25 * winter))).astype(np.float32)  # low winter sun
    s0 = ((p0 @ spectra) * gain).T  # (12, pairs)
    s1_ = ((p1 @ spectra) * gain).T
    refl = (w0 * s0[:, pair_of_pixel] + w1 * s1_[:, pair_of_pixel]) * (texture / norm)  # (12, NPIX)
    refl += (rng.uniform(0.0, 120.0 * hard) * HAZE_WEIGHT).astype(np.float32)[:, None]
    cover = fields[8].ravel()
    if header.snow:
        m_snow = 1.0 / (1.0 + np.exp(-3.0 * (cover - rng.uniform(-1.5, 0.5))))
        refl = (1.0 - m_snow) * refl + m_snow * SNOW_SPECTRUM[:, None]
    if header.cloud:
        opacity = np.clip(1.5 * (cover - rng.uniform(0.0, 1.5)), 0.0, 0.95)
        shifted = np.roll(opacity.reshape(_N, _N), (6, 6), axis=(0, 1)).ravel()
        refl = refl * (1.0 - 0.6 * shifted)  # cloud shadow
        refl = (1.0 - opacity) * refl + opacity * CLOUD_SPECTRUM[:, None]
    noise_sd = (12.0 + 0.012 * refl) * max(hard, 0.05)
    refl += rng.standard_normal(refl.shape, dtype=np.float32) * noise_sd
    img = np.clip(refl, 1.0, 18000.0).reshape(len(BANDS), _N, _N)
    s2: dict[str, np.ndarray] = {}
    for b, band in enumerate(BANDS):
        size = S2_BAND_SIZES[band]
        f = _N // size
        block = img[b].reshape(size, f, size, f).mean(axis=(1, 3))
        s2[band] = np.rint(block).astype(np.uint16)

    # ---- Sentinel-1 ----------------------------------------------------------------------
    sig0 = (p0 @ EM_S1_LIN).T  # (2, pairs) linear power
    sig1 = (p1 @ EM_S1_LIN).T
    sigma0 = (w0 * sig0[:, pair_of_pixel] + w1 * sig1[:, pair_of_pixel]) / norm  # (2, NPIX)
    cell_db = rng.normal(0.0, 1.2 * hard, size=m).astype(np.float32) + 4.0 * (u_cell - 0.5) * hard
    patch_db = rng.normal(0.0, 0.8 * hard)
    rough = (10.0 ** ((cell_db + patch_db) / 10.0)).astype(np.float32)[cell_id]
    looks = 4.5 / max(hard, 0.2)
    speckle = rng.gamma(looks, 1.0 / looks, size=sigma0.shape).astype(np.float32)
    db = 10.0 * np.log10(sigma0 * rough * speckle)
    db = np.clip(db, -35.0, 10.0).astype(np.float32)
    s1 = {name: np.ascontiguousarray(db[i].reshape(_N, _N)) for i, name in enumerate(S1_BANDS)}

    return Scene(codes.reshape(_N, _N).astype(np.uint16), labels, s2, s1)


def _parcels(rng: np.random.Generator) -> np.ndarray:
    """Per-pixel value in [0, 1] constant over small rectangular fields of a rotated grid."""
    theta = rng.uniform(0.0, np.pi)
    u = (_XX * np.cos(theta) + _YY * np.sin(theta)).ravel()
    v = (-_XX * np.sin(theta) + _YY * np.cos(theta)).ravel()
    cuts_u = np.cumsum(rng.uniform(5.0, 16.0, size=40)) - 180.0
    cuts_v = np.cumsum(rng.uniform(8.0, 30.0, size=30)) - 180.0
    iu = np.searchsorted(cuts_u, u)
    iv = np.searchsorted(cuts_v, v)
    values = rng.random((len(cuts_u) + 1, len(cuts_v) + 1)).astype(np.float32)
    return values[iu, iv]
