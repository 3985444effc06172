"""Where SCL's heatmaps meet a training view: crop + flip + resize, forwards and backwards.

Every training sample n keeps, per class, a W x W heatmap ``H_n`` (W = 2G, G = side of the
model's class score maps) describing *where in the original image* the class has been seen.
Because each training view is a random crop (and flip) of the image, the store is kept in
original-image coordinates and warped to every view:

* target (before the forward, :func:`forward_warp`): ``T(H_n)`` = the crop box region of ``H_n``,
  flipped like the image and resized to G x G (bilinear);
* update (after the forward, :func:`backward_warp` and :func:`ema_update`): the cells of ``H_n``
  whose centres lie inside the crop box take ``round(mu * H + (1 - mu) * 255 * F)``, where
  ``F = sigmoid(maps)`` is sampled (bilinear) at the cell's position in the view, flips undone.
  Cells outside the crop are not seen and keep their value.

Coordinates: the crop box ``(top, left, h, w)`` is in original pixels; it is scaled by ``W / S``
(S = image side) into continuous heatmap coordinates, where cell ``a`` spans ``[a, a + 1)``.
Sampling positions are computed per output cell centre (``align_corners=False`` convention) and
clamped to half a cell inside the box, which reproduces exactly how the image itself was made
(slice, then ``F.interpolate(..., align_corners=False)``, which clamps at the slice border) and
keeps information from outside the visible crop out of the target. For integer-aligned boxes
the target is therefore bit-for-bit ``interpolate(flip(H[box]), G)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_boxes_in_cells(
    aug: dict[str, Any] | None, batch_size: int, image_hw: tuple[int, int], width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes, hflip, vflip)`` of a batch: boxes B x 4 = (y0, x0, y1, x1) in heatmap cells.

    A batch without an ``aug`` record shows whole, unflipped images. Multiplying before
    dividing keeps pixel boundaries that fall on cell boundaries exact in floating point.
    """
    height, width_px = image_hw
    if aug is None or "crop" not in aug:
        crop = torch.tensor([[0, 0, height, width_px]], dtype=torch.float64).expand(batch_size, 4)
    else:
        crop = torch.as_tensor(aug["crop"]).reshape(batch_size, 4).to(torch.float64)
    top, left, h, w = crop.cpu().unbind(1)
    boxes = torch.stack(
        (top * width / height, left * width / width_px, (top + h) * width / height, (left + w) * width / width_px), 1
    )

    def flag(key: str) -> Tensor:
        value = None if aug is None else aug.get(key)
        if value is None:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        return torch.as_tensor(value).reshape(batch_size).bool().to(device)

    return boxes.to(device=device, dtype=torch.float32), flag("flip"), flag("vflip")


def _forward_axis(lo: Tensor, hi: Tensor, flip: Tensor, size: int, width: int) -> Tensor:
    """Normalised heatmap coordinates (B x size) sampled by the ``size`` cells of a view axis.

    Output cell j shows the point at fraction ``(j + 0.5) / size`` of the box (mirrored when
    flipped), clamped to half a cell inside the box like ``interpolate`` clamps at a slice edge.
    """
    frac = (torch.arange(size, device=lo.device, dtype=torch.float32) + 0.5) / size
    frac = torch.where(flip[:, None], 1 - frac, frac)
    extent = hi - lo
    pos = lo[:, None] + frac * extent[:, None]
    margin = (extent / 2).clamp(max=0.5)
    pos = torch.maximum(torch.minimum(pos, (hi - margin)[:, None]), (lo + margin)[:, None])
    return 2 * pos / width - 1


def _backward_axis(lo: Tensor, hi: Tensor, flip: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """For the W heatmap cells of an axis: normalised view coordinates (B x W) and visibility.

    A cell is visible when its centre lies in ``[lo, hi)``; half-open so that adjacent boxes
    share no cell. Its view position is the inverse of :func:`_forward_axis` (flip undone).
    """
    centres = torch.arange(width, device=lo.device, dtype=torch.float32) + 0.5
    inside = (centres >= lo[:, None]) & (centres < hi[:, None])
    frac = (centres - lo[:, None]) / (hi - lo).clamp_min(1e-6)[:, None]
    frac = torch.where(flip[:, None], 1 - frac, frac)
    return 2 * frac - 1, inside


def _grid(gx: Tensor, gy: Tensor) -> Tensor:
    """``grid_sample`` grid (B x Y x X x 2) of a separable warp."""
    b, ny, nx = gx.shape[0], gy.shape[1], gx.shape[1]
    return torch.stack((gx[:, None, :].expand(b, ny, nx), gy[:, :, None].expand(b, ny, nx)), dim=-1)


def forward_warp(heatmaps: Tensor, boxes: Tensor, hflip: Tensor, vflip: Tensor, grid_size: int) -> Tensor:
    """Crop + flip + resize of stored heatmaps (B x C x W x W, any float scale) to B x C x G x G."""
    width = heatmaps.shape[-1]
    gx = _forward_axis(boxes[:, 1], boxes[:, 3], hflip, grid_size, width)
    gy = _forward_axis(boxes[:, 0], boxes[:, 2], vflip, grid_size, width)
    return F.grid_sample(heatmaps, _grid(gx, gy), mode="bilinear", padding_mode="border", align_corners=False)


def backward_warp(maps: Tensor, boxes: Tensor, hflip: Tensor, vflip: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """View maps (B x C x G x G) resampled onto the W x W heatmap grid, and the visible-cell mask.

    Returns ``(values B x C x W x W, visible B x 1 x W x W)``; values outside the mask are
    meaningless (border-clamped) and must not be written.
    """
    gx, inside_x = _backward_axis(boxes[:, 1], boxes[:, 3], hflip, width)
    gy, inside_y = _backward_axis(boxes[:, 0], boxes[:, 2], vflip, width)
    values = F.grid_sample(maps, _grid(gx, gy), mode="bilinear", padding_mode="border", align_corners=False)
    visible = inside_y[:, :, None] & inside_x[:, None, :]
    return values, visible[:, None]


def ema_update(old: Tensor, probs: Tensor, visible: Tensor, momentum: float) -> Tensor:
    """``round(mu * H + (1 - mu) * 255 * F)`` on visible cells, ``H`` elsewhere; uint8 result."""
    new = (momentum * old.float() + (1 - momentum) * 255.0 * probs.float()).round().clamp(0, 255)
    return torch.where(visible, new, old.float()).to(torch.uint8)
