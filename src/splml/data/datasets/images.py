"""Multi-label RGB image datasets (AID, COCO, VOC, NUS-WIDE, CUB, retrieval sets).

Every reader of an RGB image collection reduces to the same three facts per split: a list of
image files, an N x L 0/1 label matrix and an id per image (:class:`SplitSource`). This module
turns those facts into items following the batch contract of :mod:`splml.methods.base` (exactly
like :class:`splml.data.datasets.reben.ReBENDataset`); the datamodules of
:mod:`splml.data.datamodules.images` build them, so the training script, the callbacks and the
stores never learn which collection they are looking at.

Image geometry. An image of any size is shown to the network as an ``image_size`` x
``image_size`` view of the *whole* image (stretched, as the SPML recipe's ``Resize((448, 448))``).
That S x S frame is the coordinate system of the augmentation record: a training crop box
``(top, left, height, width)`` is drawn in the frame exactly as
:class:`splml.data.transforms.RecordedSpatialAugment` draws it, but the pixels are cut from the
full-resolution source (the box mapped back to source pixels), so a small crop keeps the detail
of the original file. The heatmap store therefore sees the same record as on reBEN.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from splml.data.sampler import sample_item
from splml.data.transforms import FrameRandomResizedCrop, RecordedSpatialAugment
from splml.io.errors import DataFormatError

#: ImageNet statistics (RGB, on [0, 1]): every pretrained RGB backbone of timm expects them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The channels of an RGB image, as a trained network's data spec names them.
RGB_BANDS: tuple[str, str, str] = ("R", "G", "B")

#: File suffixes treated as images when folders are indexed (compared lower-case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(name: str) -> Image.Resampling:
    """PIL filter for a config name; a typo is an error listing the choices."""
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {name!r}") from None


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file completely into an RGB PIL image.

    ``Image.open`` only reads the header; ``load`` forces the full decode here so that a
    truncated or corrupt file fails now, with its name, instead of as a grey image or an
    anonymous error inside a DataLoader worker.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataFormatError(f"image file not found: {path}") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from exc


def render_view(
    image: Image.Image,
    size: int,
    box: tuple[int, int, int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """The ``size`` x ``size`` view of ``box`` = (top, left, h, w) in the size x size frame.

    The frame is the whole image stretched to ``size`` x ``size``; the box is mapped back to
    source pixels (rounded to whole pixels) and that region alone is resampled once, so crops
    keep the source resolution and no pixel outside the box leaks in at the border (PIL's
    ``resize(box=...)`` would read past it), as with reBEN's slice-then-interpolate.
    """
    if box is None:
        return image.resize((size, size), resample)
    top, left, h, w = box
    sx, sy = image.width / size, image.height / size
    x0, y0 = round(left * sx), round(top * sy)
    x1, y1 = max(round((left + w) * sx), x0 + 1), max(round((top + h) * sy), y0 + 1)
    return image.crop((x0, y0, x1, y1)).resize((size, size), resample)


def to_network_input(
    pixels: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """An ``S x S x 3`` uint8 view as the network reads it: ``3 x S x S`` float32 in [0, 1], then ``(x - mean) / std``."""
    # A copy: a decoded image's array may be read-only, which torch.from_numpy warns about.
    scaled = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(255.0)
    return ((scaled - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).contiguous()


def build_photometric(spec: Sequence[dict[str, Any]] | None) -> Any:
    """An albumentations ``Compose`` of pixel-level transforms from config, or None.

    ``spec`` is a list of ``{name: <albumentations class>, <its arguments>}``. Only
    ``ImageOnlyTransform`` classes are accepted: a transform that moves pixels (crop, rotate,
    affine) would not be reflected in the ``aug`` record that spatial methods rely on, so it is
    refused with a message pointing at the recorded options.
    """
    if not spec:
        return None
    # The package checks PyPI for a newer version on import unless told not to; training must not.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    transforms = []
    for k, entry in enumerate(spec):
        entry = dict(entry)
        name = entry.pop("name", None)
        cls = getattr(A, str(name), None) if name else None
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"augment.photometric[{k}]: {name!r} is not an albumentations transform")
        if not issubclass(cls, A.ImageOnlyTransform):
            raise TypeError(
                f"augment.photometric[{k}]: {name} changes the geometry of the image, which the augmentation "
                "record cannot follow; use augment.crop_scale / hflip / vflip for spatial augmentation"
            )
        transforms.append(cls(**entry))
    return A.Compose(transforms)


class RecordedImageAugment(RecordedSpatialAugment):
    """Random resized crop and flips recorded in ``item["aug"]``, then photometric transforms.

    The crop box and flips are drawn as by the parent class in the ``image_size`` frame (same
    generator calls in the same order, same record), but the view is cut from the decoded
    source image (``item["image"]``, a PIL image) rather than from an already-resized tensor: the
    crop renders it from the pipeline's ``source`` (so the ``image`` it is given only stands in
    until then, and the source is never converted to an array). Photometric transforms come
    from albumentations (config list ``photometric``); their randomness is seeded from the same
    per-item generator, so a resumed run repeats them.
    The result in ``item["image"]`` is an ``image_size`` x ``image_size`` x 3 uint8 array.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        vflip: bool = False,
        photometric: Sequence[dict[str, Any]] | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.image_size = int(image_size)
        self.resample = resample_filter(interpolation)
        super().__init__(crop_scale=crop_scale, crop_ratio=crop_ratio, hflip=hflip, vflip=vflip)
        self.photometric_spec = [dict(x) for x in (photometric or [])]
        # Built eagerly so that a config error surfaces at setup, not in a worker.
        self._photometric = build_photometric(self.photometric_spec)
        self._stand_in = np.zeros((1, 1, 3), dtype=np.uint8)

    def crop_transform(self) -> FrameRandomResizedCrop:
        # Always: without crop_scale it renders the whole frame (and draws nothing).
        frame = (self.image_size, self.image_size)
        return FrameRandomResizedCrop(self.crop_scale, self.crop_ratio, frame=frame, render=self._render)

    def _render(self, source: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        return np.array(render_view(source, self.image_size, box, self.resample), dtype=np.uint8)

    def __call__(self, item: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        size = self.image_size
        out = self.augment(generator, (size, size), image=self._stand_in, source=item["image"])
        pixels = out["image"]
        if self._photometric is not None:
            self._photometric.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            pixels = np.ascontiguousarray(self._photometric(image=pixels)["image"])
        item["image"] = pixels
        item["aug"] = out["aug"]
        return item


def check_observed(observed: np.ndarray, targets: np.ndarray, ids: Sequence[str], where: str) -> np.ndarray:
    """Validate an observed label matrix (shape of ``targets``, values in {-1, 0, 1}).

    Shared by every dataset that accepts observed labels, so the error always names the sample.
    """
    observed = np.asarray(observed, dtype=np.float32)
    if observed.shape != targets.shape:
        raise ValueError(f"observed labels have shape {observed.shape}, expected {targets.shape} for {where}")
    bad = ~np.isin(observed, (-1.0, 0.0, 1.0))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"observed labels must be -1, 0 or 1; row {row} ({ids[row]}) of {where} has {observed[row].tolist()}"
        )
    return observed


class MultiLabelImageDataset(torch.utils.data.Dataset):
    """One split of an RGB multi-label collection; items follow the batch contract.

    ``image`` is a 3 x S x S float32 tensor normalised with the ImageNet statistics, ``target``
    the full labels, ``observed`` the labels the loss may see (full labels unless
    :meth:`set_observed` installed others), ``index`` the position in this split, ``padded``
    the sampler's padding flag and, when ``transform`` is set, the ``aug`` record. Keys from
    the sampler are ``(index, augmentation seed, padded)`` tuples; plain ints work too.
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        targets: np.ndarray,
        ids: Sequence[str],
        transform: RecordedImageAugment | None = None,
        image_size: int = 224,
        interpolation: str = "bilinear",
        name: str = "images",
        class_names: Sequence[str] | None = None,
    ) -> None:
        targets = np.asarray(targets)
        if targets.ndim != 2:
            raise ValueError(f"{name}: labels must be an N x L matrix, got shape {targets.shape}")
        if not (len(image_paths) == len(ids) == targets.shape[0]):
            raise ValueError(
                f"{name}: {len(image_paths)} images, {len(ids)} ids and {targets.shape[0]} label rows must match"
            )
        if transform is not None and transform.image_size != int(image_size):
            raise ValueError(f"{name}: transform renders {transform.image_size} px but image_size is {image_size}")
        self.image_paths = [Path(p) for p in image_paths]
        self.ids = [str(i) for i in ids]
        self.targets = targets.astype(np.uint8)
        self.observed: np.ndarray = self.targets.astype(np.float32)
        self.transform = transform
        self.image_size = int(image_size)
        self.resample = resample_filter(interpolation)
        self.name = name
        # Plots of per-sample stores read class names from the training dataset, as on reBEN.
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(str(c) for c in range(targets.shape[1]))
        )

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, i: int) -> Image.Image:
        """The decoded source image of sample ``i`` (RGB, native size)."""
        return read_rgb(self.image_paths[i])

    def eval_view(self, image: Any) -> np.ndarray:
        """The input without augmentation, ``S x S x 3`` uint8: the whole image resized (datasets may override)."""
        return np.array(render_view(image, self.image_size, None, self.resample), dtype=np.uint8)

    def display_image(self, i: int) -> np.ndarray:
        """Image ``i`` as the network sees it without augmentation, ``S x S x 3`` uint8 (figures only)."""
        return self.eval_view(self.read_image(i))

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        item = sample_item(key, self.read_image, self.targets, self.observed, self.transform)
        if self.transform is None:
            item["image"] = self.eval_view(item["image"])
        item["image"] = to_network_input(item["image"])
        return item

    def set_observed(self, observed: np.ndarray) -> None:
        """Install observed labels (N x L in {-1, 0, 1}), validated against this split."""
        self.observed = check_observed(observed, self.targets, self.ids, f"split {self.name!r}")


@dataclass(frozen=True)
class SplitSource:
    """The images, full labels and ids of one split, before any dataset object exists."""

    paths: tuple[Path, ...]
    targets: np.ndarray
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.ids) == len(self.targets)):
            raise ValueError(f"{len(self.paths)} paths, {len(self.ids)} ids, {len(self.targets)} label rows")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: Sequence[int] | np.ndarray) -> SplitSource:
        rows = np.asarray(rows, dtype=np.int64)
        return SplitSource(tuple(self.paths[r] for r in rows), self.targets[rows], tuple(self.ids[r] for r in rows))


def seeded_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, carved) sorted index arrays, ``round(fraction * n)`` carved.

    The SPML literature's convention (Cole et al. 2021: official train -> 80 % train / 20 %
    validation with split seed 1200): one ``numpy.random.RandomState(seed)`` permutation, the
    first ``n - n_carved`` entries kept and the last ``n_carved`` carved, both sorted. Using the
    same permutation rule reproduces the literature's validation images exactly.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    n_carved = int(np.round(fraction * n))
    order = np.random.RandomState(seed).permutation(n)
    return np.sort(order[: n - n_carved]), np.sort(order[n - n_carved :])
