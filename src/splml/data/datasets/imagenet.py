"""ImageNet-1K items: fast JPEG decoding, the standard training crop, the standard evaluation view.

The label files are read by :mod:`splml.io.imagenet`; which images form each split is
:class:`splml.data.datamodules.imagenet.ImageNetDataModule`'s business. This module turns an
image file into a model input, as :mod:`splml.data.datasets.images` does for the other RGB
collections, with three differences that matter at ImageNet's scale and for its pretrained models:

* **Decoding** (:func:`decode_rgb`): ``torchvision.io.decode_jpeg`` (libjpeg-turbo), 1.8x faster
  than PIL per core on ImageNet-sized JPEGs (``experiments/data/README.md``), with PIL as
  the fallback for what it refuses (the few PNG files under a ``.JPEG`` name, anything else PIL
  reads). A file that neither can decode (truncated, corrupt) is a
  :class:`~splml.io.errors.DataFormatError` naming it.
* **Training crop** (:class:`ImageNetTrainAugment`): torchvision's random resized crop drawn in the
  *source* pixels (area fraction and aspect ratio of the original image, as every ImageNet
  recipe draws it), cut at full resolution, and recorded in the ``image_size`` frame that the
  heatmap store uses (a float box), so SCL's geometry is unchanged.
* **Evaluation view**: the standard resize-then-centre-crop (``eval_crop_fraction`` = 224/256:
  the shorter side goes to ``image_size / eval_crop_fraction`` and the central ``image_size``
  square is kept, done as one crop + resize of the source), instead of the stretched whole image;
  ``eval_crop_fraction: null`` shows the whole image stretched, as for the other collections.

Evaluation items may carry two more keys, read by the metric accumulator
(:class:`splml.metrics.MultiLabelMetricAccumulator`): ``original_label`` (the image's single
ImageNet label, -1 if none) and ``has_target`` (False for an image whose multi-label ground truth
is unknown, e.g. left out by ReaL: it is left out of the multi-label metrics).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from splml.data.datasets.images import (
    IMAGE_SUFFIXES,
    MultiLabelImageDataset,
    RecordedImageAugment,
)
from splml.data.transforms import BandHorizontalFlip, BandVerticalFlip, Box, FrameRandomResizedCrop, draw_crop_box
from splml.io.errors import DataFormatError

#: The standard ImageNet evaluation: resize to 256, centre crop 224.
DEFAULT_EVAL_CROP_FRACTION = 224 / 256


def _torchvision_decode(data: bytes) -> np.ndarray | None:
    """H x W x 3 uint8 RGB from JPEG bytes by libjpeg-turbo, or None if torchvision cannot decode them."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without its image decoders: PIL does the work
        return None
    with warnings.catch_warnings():
        # torchvision 0.29 announces that its decoders will move to torchcodec; pinned here, they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError):
            return None
    return pixels.permute(1, 2, 0).numpy()


def decode_rgb(path: str | Path) -> Image.Image:
    """Decode an image file completely into an RGB PIL image (libjpeg-turbo first, PIL as the fallback).

    Grayscale and CMYK JPEGs come out as RGB; PNG data under a ``.JPEG`` name is read by PIL. A
    missing, truncated or corrupt file is a :class:`DataFormatError` naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataFormatError(f"image file not found: {path}") from exc
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read the file ({exc})") from exc
    pixels = _torchvision_decode(data) if data else None
    if pixels is not None:
        return Image.fromarray(pixels)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: a truncated file fails here, with its name
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from exc


def centre_crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """PIL box (x0, y0, x1, y1) of the central square whose side is ``fraction`` of the shorter side."""
    side = max(1, round(min(width, height) * fraction))
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


class SourceRandomResizedCrop(FrameRandomResizedCrop):
    """The random resized crop drawn in the pixels of the ``source`` image (torchvision's geometry).

    ``crop_coords`` are reported in source pixels; :class:`ImageNetTrainAugment` converts the
    record into the ``image_size`` frame.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        source = data["source"]
        height, width = source.height, source.width
        if self.scale is None:
            top, left, h, w = 0, 0, height, width
        else:
            generator = getattr(self.py_random, "generator", None)
            top, left, h, w = draw_crop_box(height, width, self.scale, self.ratio, generator)
        return {"crop_coords": (left, top, left + w, top + h), "source": source}


class ImageNetTrainAugment(RecordedImageAugment):
    """Random resized crop in source pixels + flips, recorded in the ``image_size`` frame.

    The record's ``crop`` is the source box scaled into the S x S frame (floats), which is what
    :func:`splml.methods.scl.geometry.crop_boxes_in_cells` reads; flips and photometric transforms
    are those of :class:`RecordedImageAugment`, with every draw from the per-sample generator.
    """

    def crop_transform(self) -> FrameRandomResizedCrop:
        return SourceRandomResizedCrop(self.crop_scale, self.crop_ratio, render=self._render_source)

    def _render_source(self, source: Image.Image, box: Box) -> np.ndarray:
        top, left, h, w = box
        view = source.crop((left, top, left + w, top + h)).resize((self.image_size, self.image_size), self.resample)
        return np.array(view, dtype=np.uint8)

    def augment(self, generator: torch.Generator | None, frame: tuple[int, int], **data: Any) -> dict[str, Any]:
        """The pipeline's output with ``aug``: the crop box (source pixels) mapped into the S x S frame."""
        self._draws.generator = generator
        out = self.pipeline(force_apply=True, **data)
        applied = dict(out.pop("applied_transforms"))
        crop = applied.get(SourceRandomResizedCrop.__name__)
        box = FrameRandomResizedCrop.box(crop["crop_coords"]) if crop else (0, 0, *frame)
        height, width = frame
        scale = torch.tensor([self.image_size / height, self.image_size / width] * 2, dtype=torch.float64)
        out["aug"] = {
            "crop": (torch.tensor(box, dtype=torch.float64) * scale).float(),
            "flip": torch.tensor(BandHorizontalFlip.__name__ in applied),
            "vflip": torch.tensor(BandVerticalFlip.__name__ in applied),
        }
        return out

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        source: Image.Image = item["image"]
        out = self.augment(generator, (source.height, source.width), image=self._stand_in, source=source)
        pixels = out["image"]
        if self._photometric is not None:
            self._photometric.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            pixels = np.ascontiguousarray(self._photometric(image=pixels)["image"])
        item["image"], item["aug"] = pixels, out["aug"]
        return item


class ImageNetDataset(MultiLabelImageDataset):
    """One split of ImageNet: decoding by :func:`decode_rgb`, the centre-crop evaluation view.

    ``original_labels`` (class index per image, -1 = none) and ``has_target`` (bool per image),
    when given, are added to every item as ``original_label`` and ``has_target``.
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        targets: np.ndarray,
        ids: Sequence[str],
        transform: RecordedImageAugment | None = None,
        image_size: int = 224,
        interpolation: str = "bilinear",
        name: str = "ImageNet",
        class_names: Sequence[str] | None = None,
        eval_crop_fraction: float | None = DEFAULT_EVAL_CROP_FRACTION,
        original_labels: np.ndarray | None = None,
        has_target: np.ndarray | None = None,
    ) -> None:
        super().__init__(image_paths, targets, ids, transform, image_size, interpolation, name, class_names)
        if eval_crop_fraction is not None and not 0 < eval_crop_fraction <= 1:
            raise ValueError(f"{name}: eval_crop_fraction must be in (0, 1] or null, got {eval_crop_fraction}")
        self.eval_crop_fraction = eval_crop_fraction
        n = len(self.image_paths)
        for key, values in (("original_labels", original_labels), ("has_target", has_target)):
            if values is not None and np.shape(values) != (n,):
                raise ValueError(f"{name}: {key} must have one entry per image ({n}), got shape {np.shape(values)}")
        self.original_labels = None if original_labels is None else np.asarray(original_labels, dtype=np.int64)
        self.has_target = None if has_target is None else np.asarray(has_target, dtype=bool)

    def read_image(self, i: int) -> Image.Image:
        return decode_rgb(self.image_paths[i])

    def eval_view(self, image: Image.Image) -> np.ndarray:
        """The evaluation input, S x S x 3 uint8: centre crop + resize, or the whole image stretched."""
        size = self.image_size
        if self.eval_crop_fraction is None:
            return np.array(image.resize((size, size), self.resample), dtype=np.uint8)
        box = centre_crop_box(image.width, image.height, self.eval_crop_fraction)
        return np.array(image.resize((size, size), self.resample, box=box), dtype=np.uint8)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        item = super().__getitem__(key)
        index = item["index"]
        if self.original_labels is not None:
            item["original_label"] = int(self.original_labels[index])
        if self.has_target is not None:
            item["has_target"] = bool(self.has_target[index])
        return item


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (hidden files left out)."""
    with os.scandir(folder) as entries:
        names = [
            e.name for e in entries
            if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        ]  # fmt: skip
    return [folder / name for name in sorted(names)]


def class_folders(folder: Path) -> list[str]:
    """The sub-folder names of ``folder`` (one per class), sorted as strings (hidden ones left out)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
