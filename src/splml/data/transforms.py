"""Training-time spatial augmentation that records what it did.

Spatial methods (SCL's heatmap store) must know which part of the original image a training
crop shows and whether it was flipped, so the augmentation writes an ``aug`` record into the
sample: ``crop`` = (top, left, height, width) in original pixel coordinates, then ``flip``
(horizontal) and ``vflip`` (vertical), both applied after cropping.

The augmentation is an albumentations ``Compose`` (random resized crop, ``HorizontalFlip``,
``VerticalFlip``) run with ``save_applied_params=True``: the record is read from the parameters
albumentations reports for the transforms it applied. A C x H x W band stack goes in as
albumentations' ``volume`` (one slice per band), as the torch tensor it is: the three
transforms here handle a volume with torch, so it is neither transposed to H x W x C nor
converted to numpy and back (each conversion costs more than a flip of a small patch).

Two things stay as they were, so that archived runs keep their numbers:

* Every draw comes from the per-sample ``torch.Generator`` that the sampler seeds from
  (seed, epoch, index), in the same order (crop, horizontal flip, vertical flip): the
  transforms draw through their ``py_random``, which :class:`TorchDraws` serves from that
  generator, so a resumed run repeats them. The crop box is drawn by :func:`draw_crop_box`
  (torchvision's algorithm; albumentations' own ``RandomResizedCrop`` samples the area rather
  than the scale and falls back to a centre crop, which would change every box).
* The crop is resampled with torch's bilinear interpolation (``align_corners=False``), as
  before; OpenCV's float ``INTER_LINEAR``, which albumentations would use, differs from it by up
  to 5e-5 per pixel.

And one for speed: a band stack is flipped by ``torch.flip`` (:class:`BandHorizontalFlip`,
:class:`BandVerticalFlip`); numpy's copy of a reversed last axis, which albumentations' volume
flip makes, takes 160 us instead of 60 us for 12 x 120 x 120 float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The package checks PyPI for a newer version on import unless told not to; training must not.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

#: (top, left, height, width) of a crop box.
Box = tuple[int, int, int, int]


class TorchDraws:
    """The ``py_random`` of albumentations transforms, served from a ``torch.Generator``.

    albumentations decides whether a transform with probability ``p`` applies by
    ``py_random.random() < p``; answering from the per-sample generator makes that decision
    ``torch.rand(1, generator=g) < p``, the draw of the earlier implementation. ``generator``
    None means torch's global generator.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def random(self) -> float:
        return float(torch.rand(1, generator=self.generator))


def draw_crop_box(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
) -> Box:
    """A random resized crop box (top, left, h, w), as torchvision's ``RandomResizedCrop`` draws it.

    Up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    the whole image if none fits.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*scale, generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=generator)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return 0, 0, height, width  # fall back to the whole image, as torchvision does


def resized_crop(bands: torch.Tensor, box: Box) -> torch.Tensor:
    """Cut ``box`` from a C x H x W tensor and resize it back to H x W (bilinear); the whole image is returned as is."""
    _, height, width = bands.shape
    top, left, h, w = box
    if (h, w) == (height, width):
        return bands
    crop = bands[:, top : top + h, left : left + w]
    return F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)[0]


class FrameRandomResizedCrop(A.DualTransform):
    """Random resized crop drawn by :func:`draw_crop_box` from the transform's ``py_random`` generator.

    The box is drawn in ``frame`` (height, width), or in the input's own size when ``frame`` is
    None, and reported as albumentations' ``crop_coords`` (x_min, y_min, x_max, y_max).
    ``scale`` None keeps the whole frame without drawing anything. The pixels: with ``render``,
    ``render(source, box)`` of the ``source`` the pipeline was called with (e.g. a
    full-resolution image, to cut the box from it at its own resolution); else the box of the
    input resized back to the input's size by :func:`resized_crop`.
    """

    def __init__(
        self,
        scale: Sequence[float] | None = None,
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        frame: tuple[int, int] | None = None,
        render: Callable[[Any, Box], np.ndarray] | None = None,
    ) -> None:
        super().__init__(p=1.0)
        self.scale = tuple(scale) if scale is not None else None
        self.ratio = tuple(ratio)
        self.frame = frame
        self.render = render

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = self.frame if self.frame is not None else params["shape"][:2]
        if self.scale is None:
            top, left, h, w = 0, 0, height, width
        else:
            generator = getattr(self.py_random, "generator", None)
            top, left, h, w = draw_crop_box(height, width, self.scale, self.ratio, generator)
        params = {"crop_coords": (left, top, left + w, top + h)}
        if self.render is not None:
            params["source"] = data["source"]
        return params

    @staticmethod
    def box(crop_coords: Sequence[int]) -> Box:
        """(top, left, h, w) of albumentations' (x_min, y_min, x_max, y_max)."""
        x_min, y_min, x_max, y_max = crop_coords
        return int(y_min), int(x_min), int(y_max - y_min), int(x_max - x_min)

    def apply(self, img: np.ndarray, crop_coords: Sequence[int], **params: Any) -> np.ndarray:
        if self.render is not None:
            return self.render(params["source"], self.box(crop_coords))
        bands = torch.from_numpy(img).permute(2, 0, 1)
        return resized_crop(bands, self.box(crop_coords)).permute(1, 2, 0).numpy()

    def apply_to_volume(self, volume: torch.Tensor, crop_coords: Sequence[int], **params: Any) -> torch.Tensor:
        return resized_crop(volume, self.box(crop_coords))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio", "frame")


class BandHorizontalFlip(A.HorizontalFlip):
    """albumentations' ``HorizontalFlip``; a C x H x W band stack (a tensor as ``volume``) is flipped by torch."""

    def apply_to_volume(self, volume: torch.Tensor, **params: Any) -> torch.Tensor:
        return volume.flip(-1)


class BandVerticalFlip(A.VerticalFlip):
    """albumentations' ``VerticalFlip``; a C x H x W band stack (a tensor as ``volume``) is flipped by torch."""

    def apply_to_volume(self, volume: torch.Tensor, **params: Any) -> torch.Tensor:
        return volume.flip(-2)


class RecordedSpatialAugment:
    """Random resized crop (optional) and flips of a C x H x W tensor, recorded in ``item["aug"]``.

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
        self._draws = TorchDraws()
        # One target (the image or the band stack): nothing to check the shape of against.
        self.pipeline = A.Compose(self.spatial_transforms(), save_applied_params=True, is_check_shapes=False)
        # Only py_random is drawn from (TorchDraws); albumentations requires a numpy generator too.
        self.pipeline.set_random_state(np.random.default_rng(0), self._draws)  # type: ignore[arg-type]

    def crop_transform(self) -> FrameRandomResizedCrop | None:
        """The random resized crop, only with ``crop_scale`` (subclasses that render always crop)."""
        return FrameRandomResizedCrop(self.crop_scale, self.crop_ratio) if self.crop_scale is not None else None

    def spatial_transforms(self) -> list[A.BasicTransform]:
        """The crop, then the flips that are on (each applied with p = 0.5)."""
        optional = [
            (self.crop_transform(), True),
            (BandHorizontalFlip(p=0.5), self.hflip),
            (BandVerticalFlip(p=0.5), self.vflip),
        ]
        return [transform for transform, used in optional if transform is not None and used]

    def augment(self, generator: torch.Generator | None, frame: tuple[int, int], **data: Any) -> dict[str, Any]:
        """Run the pipeline on ``data`` (albumentations targets) with draws from ``generator``.

        Returns albumentations' output with ``aug``, the record: the crop box in ``frame``
        coordinates (the whole frame when no crop ran) and the flip flags.
        """
        self._draws.generator = generator
        # force_apply: the Compose itself would otherwise draw once for its own p (= 1).
        out = self.pipeline(force_apply=True, **data)
        applied = dict(out.pop("applied_transforms"))
        crop = applied.get(FrameRandomResizedCrop.__name__)
        box = FrameRandomResizedCrop.box(crop["crop_coords"]) if crop else (0, 0, *frame)
        out["aug"] = {
            "crop": torch.tensor(box, dtype=torch.long),
            "flip": torch.tensor(BandHorizontalFlip.__name__ in applied),
            "vflip": torch.tensor(BandVerticalFlip.__name__ in applied),
        }
        return out

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        image: torch.Tensor = item["image"]
        out = self.augment(generator, tuple(image.shape[1:]), volume=image)
        item["image"] = out["volume"].contiguous()
        item["aug"] = out["aug"]
        return item


class DeferredSpatialAugment(RecordedSpatialAugment):
    """The record of :class:`RecordedSpatialAugment` without the pixels: they are moved on the device.

    Draws the same crop box and flips from the same per-sample generator, in the same order
    (the same albumentations pipeline runs, on a 1 x 1 stand-in), and writes the same
    ``item["aug"]``; ``item["image"]`` stays the whole ``image_size`` frame and
    ``item["augment_on_device"]`` tells the datamodule to apply the record to the batch once it
    is on the device (:func:`apply_recorded_augment`, in ``on_after_batch_transfer``).
    """

    def __init__(self, image_size: int, **options: Any) -> None:
        self.frame = (int(image_size), int(image_size))
        self._stand_in = np.zeros((1, 1, 1), dtype=np.float32)
        super().__init__(**options)

    def crop_transform(self) -> FrameRandomResizedCrop | None:
        if self.crop_scale is None:
            return None
        # Drawn in the image's frame; the "rendered" view is the stand-in itself (no pixels here).
        return FrameRandomResizedCrop(self.crop_scale, self.crop_ratio, frame=self.frame, render=_keep_source)

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        frame = tuple(item["image"].shape[-2:])
        if frame != self.frame:
            raise ValueError(f"device augmentation was set up for {self.frame} images, got an item of {frame}")
        item["aug"] = self.augment(generator, self.frame, image=self._stand_in, source=self._stand_in)["aug"]
        item["augment_on_device"] = True
        return item


def _keep_source(source: np.ndarray, box: Box) -> np.ndarray:
    return source


def apply_recorded_augment(images: torch.Tensor, aug: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply recorded crops and flips to a batch where it lies (e.g. on the GPU), in one resampling.

    ``images`` is B x C x H x W (or B x V x C x H x W with V views; ``aug`` entries then have a
    leading B x V); ``aug`` holds ``crop`` (B x 4: top, left, h, w in the image's own frame),
    ``flip`` and ``vflip`` (B, bool), as :class:`RecordedSpatialAugment` records them. The
    result equals that class's per-item path: the box resized back to H x W with bilinear
    interpolation (``align_corners=False``), then the flips. A batch without a crop is only
    flipped (exact); crops are sampled with ``grid_sample`` at the positions ``F.interpolate``
    reads, clamped to the box as it clamps them, so they agree to float rounding.
    """
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])
    n, _, height, width = flat.shape
    crop = aug["crop"].reshape(n, 4).to(device=flat.device)
    hflip = aug["flip"].reshape(n).to(device=flat.device, dtype=torch.bool)
    vflip = aug["vflip"].reshape(n).to(device=flat.device, dtype=torch.bool)
    whole = torch.tensor([0, 0, height, width], device=flat.device)
    if bool((crop == whole).all()):
        out = torch.where(hflip[:, None, None, None], flat.flip(-1), flat)
        out = torch.where(vflip[:, None, None, None], out.flip(-2), out)
        return out.reshape(shape)
    box = crop.to(torch.float64)
    rows = _source_positions(box[:, 0], box[:, 2], height, vflip)  # n x H, in source pixels
    cols = _source_positions(box[:, 1], box[:, 3], width, hflip)  # n x W
    # grid_sample (align_corners=False) reads pixel x at the normalised coordinate (2x + 1) / size - 1.
    grid = torch.stack(
        [
            ((2 * cols + 1) / width - 1)[:, None, :].expand(n, height, width),
            ((2 * rows + 1) / height - 1)[:, :, None].expand(n, height, width),
        ],
        dim=-1,
    )
    out = F.grid_sample(flat, grid.to(flat.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(shape)


def _source_positions(start: torch.Tensor, length: torch.Tensor, size: int, flipped: torch.Tensor) -> torch.Tensor:
    """Where output pixels 0..size-1 read the source along one axis (n x size, float64 source pixels).

    ``F.interpolate(bilinear, align_corners=False)`` of a box of ``length`` pixels to ``size``
    reads ``(j + 0.5) * length / size - 0.5`` inside the box, clamped to [0, length - 1]; a flip
    after the resize makes output pixel ``j`` the resized pixel ``size - 1 - j``.
    """
    j = torch.arange(size, device=start.device, dtype=torch.float64)[None, :].expand(start.shape[0], size)
    j = torch.where(flipped[:, None], size - 1 - j, j)
    inside = ((j + 0.5) * length[:, None] / size - 0.5).clamp(min=0.0)
    inside = torch.minimum(inside, (length - 1)[:, None])
    return start[:, None] + inside
