"""Training-time spatial augmentation that records what it did.

Spatial methods (SCL's heatmap store) must know which part of the original image a training
crop shows and whether it was flipped, so the augmentation writes an ``aug`` record into the
sample: ``crop`` = (top, left, height, width) in original pixel coordinates, then ``flip``
(horizontal) and ``vflip`` (vertical), both applied after cropping.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


class RecordedSpatialAugment:
    """Random resized crop (optional) and horizontal flip, recorded in ``item["aug"]``.

    Draws come from the ``generator`` passed per sample (seeded from (seed, epoch, index) by the
    training sampler, so a resumed run repeats them exactly), or torch's global generator.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        vflip: bool = False,
    ) -> None:
        if crop_scale is not None:
            lo, hi = crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        self.vflip = vflip

    def _crop_box(self, height: int, width: int, gen: torch.Generator | None) -> tuple[int, int, int, int]:
        if self.crop_scale is None:
            return 0, 0, height, width
        area = height * width
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.crop_scale, generator=gen))
            ratio = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
                left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
                return top, left, h, w
        return 0, 0, height, width  # fall back to the whole image, as torchvision does

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        image = item["image"]
        _, height, width = image.shape
        top, left, h, w = self._crop_box(height, width, generator)
        if (h, w) != (height, width):
            image = image[:, top : top + h, left : left + w]
            image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        flip = self.hflip and bool(torch.rand(1, generator=generator) < 0.5)
        if flip:
            image = image.flip(-1)
        vflip = self.vflip and bool(torch.rand(1, generator=generator) < 0.5)
        if vflip:
            image = image.flip(-2)
        item["image"] = image.contiguous()
        item["aug"] = {
            "crop": torch.tensor([top, left, h, w], dtype=torch.long),
            "flip": torch.tensor(flip),
            "vflip": torch.tensor(vflip),
        }
        return item
