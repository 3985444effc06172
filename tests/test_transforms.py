"""The recorded augmentation (albumentations pipeline, draws from the per-sample torch generator)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splml.data.sampler import item_seed
from splml.data.transforms import FrameRandomResizedCrop, RecordedSpatialAugment


def _reference_draws(gen: torch.Generator | None, size: int, scale, ratio, hflip: bool, vflip: bool):
    """The draws of the augmentation as first written (torchvision's crop algorithm, then the flips).

    Written out here, independently of the module, so that a change of the random stream (an extra
    draw, another order, albumentations' own sampling) fails the tests: archived runs depend on it.
    """
    box = (0, 0, size, size)
    if scale is not None:
        area = size * size
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*scale, generator=gen))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= size and 0 < h <= size:
                top = int(torch.randint(0, size - h + 1, (1,), generator=gen))
                left = int(torch.randint(0, size - w + 1, (1,), generator=gen))
                box = (top, left, h, w)
                break
    flip = hflip and bool(torch.rand(1, generator=gen) < 0.5)
    vflip_ = vflip and bool(torch.rand(1, generator=gen) < 0.5)
    return box, flip, vflip_


CONFIGS = [
    {"crop_scale": None, "hflip": True, "vflip": True},
    {"crop_scale": None, "hflip": False, "vflip": True},
    {"crop_scale": (0.5, 1.0), "hflip": True, "vflip": True},
    {"crop_scale": (0.05, 0.2), "crop_ratio": (0.2, 5.0), "hflip": True, "vflip": False},  # some fall back to the whole
]


@pytest.mark.parametrize("config", CONFIGS)
def test_draws_and_pixels_are_those_of_the_per_sample_generator(config) -> None:
    size = 24
    image = torch.randn(5, size, size, generator=torch.Generator().manual_seed(0))
    augment = RecordedSpatialAugment(**config)
    ratio = config.get("crop_ratio", (3 / 4, 4 / 3))
    for index in range(60):
        seed = item_seed(7, 2, index)
        gen, ref_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        item = augment({"image": image.clone()}, generator=gen)
        box, flip, vflip = _reference_draws(
            ref_gen, size, config["crop_scale"], ratio, config["hflip"], config["vflip"]
        )
        assert item["aug"]["crop"].tolist() == list(box)
        assert (bool(item["aug"]["flip"]), bool(item["aug"]["vflip"])) == (flip, vflip)
        # Nothing else was drawn (albumentations' Compose would draw for its own p).
        assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=ref_gen))
        # The pixels are the recorded view: crop resized back (bilinear), then the flips.
        top, left, h, w = box
        expected = image[:, top : top + h, left : left + w]
        if (h, w) != (size, size):
            expected = F.interpolate(expected[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if flip:
            expected = expected.flip(-1)
        if vflip:
            expected = expected.flip(-2)
        assert torch.equal(item["image"], expected) and item["image"].is_contiguous()
        assert item["aug"]["crop"].dtype == torch.long and item["aug"]["flip"].dtype == torch.bool


def test_without_a_generator_the_global_one_draws() -> None:
    augment = RecordedSpatialAugment(crop_scale=(0.3, 1.0), hflip=True, vflip=True)
    torch.manual_seed(11)
    records = [augment({"image": torch.zeros(2, 16, 16)})["aug"] for _ in range(10)]
    torch.manual_seed(11)
    for record in records:
        box, flip, vflip = _reference_draws(None, 16, (0.3, 1.0), (3 / 4, 4 / 3), True, True)
        assert record["crop"].tolist() == list(box) and bool(record["flip"]) == flip and bool(record["vflip"]) == vflip


def test_record_comes_from_albumentations_applied_params() -> None:
    """The record is what the pipeline reports with save_applied_params, in original pixel coordinates."""
    augment = RecordedSpatialAugment(crop_scale=(0.2, 0.5), hflip=True, vflip=True)
    assert augment.pipeline.save_applied_params
    out = augment.pipeline(force_apply=True, volume=torch.randn(3, 32, 32))
    applied = dict(out["applied_transforms"])
    x_min, y_min, x_max, y_max = applied["FrameRandomResizedCrop"]["crop_coords"]
    assert 0 <= x_min < x_max <= 32 and 0 <= y_min < y_max <= 32
    assert FrameRandomResizedCrop.box((x_min, y_min, x_max, y_max)) == (y_min, x_min, y_max - y_min, x_max - x_min)
    assert set(applied) <= {"FrameRandomResizedCrop", "BandHorizontalFlip", "BandVerticalFlip"}


def test_a_resumed_epoch_repeats_its_augmentation_and_another_epoch_does_not() -> None:
    augment = RecordedSpatialAugment(crop_scale=(0.4, 1.0), hflip=True, vflip=True)
    image = torch.randn(3, 20, 20)

    def crops(epoch: int) -> list[list[int]]:
        return [
            augment({"image": image}, generator=torch.Generator().manual_seed(item_seed(1, epoch, i)))["aug"][
                "crop"
            ].tolist()
            for i in range(20)
        ]

    assert crops(3) == crops(3)
    assert crops(3) != crops(4)


def test_invalid_crop_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        RecordedSpatialAugment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop_scale"):
        RecordedSpatialAugment(crop_scale=(0.8, 0.5))
