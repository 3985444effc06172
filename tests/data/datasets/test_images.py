"""Generic RGB image items: the batch contract, the recorded augmentation, decoding errors, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splml.data.datasets.image_folders import AID_CLASSES
from splml.data.datasets.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiLabelImageDataset,
    RecordedImageAugment,
    render_view,
    seeded_split,
)
from splml.data.sampler import EpochSeededSampler, item_seed
from splml.data.transforms import RecordedSpatialAugment
from splml.io.errors import DataFormatError
from tests.image_support import write_aid_tree, write_image


def _dataset(tmp_path: Path, transform=None, size: int = 16) -> MultiLabelImageDataset:
    paths = [
        write_image(tmp_path / "a.jpg", (40, 30), 1),
        write_image(tmp_path / "b.png", (17, 23), 2, mode="L"),  # grayscale, odd size
        write_image(tmp_path / "c.tif", (32, 32), 3),
    ]
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    return MultiLabelImageDataset(paths, targets, ["a", "b", "c"], transform=transform, image_size=size)


def test_item_follows_the_batch_contract(tmp_path):
    ds = _dataset(tmp_path)
    item = ds[(1, 123, True)]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["index"] == 1 and item["padded"] is True
    torch.testing.assert_close(item["target"], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(item["observed"], item["target"])
    assert "aug" not in item  # evaluation items show the whole image
    assert ds[0]["index"] == 0  # plain indices work too
    ds.set_observed(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    torch.testing.assert_close(ds[2]["observed"], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"row 0 \(a\)"):
        ds.set_observed(np.array([[2, 0, 0], [0, 1, 0], [0, 0, 1]]))


def test_pixels_are_normalised_with_imagenet_statistics(tmp_path):
    Image.new("RGB", (20, 10), (255, 128, 0)).save(tmp_path / "flat.png")
    ds = MultiLabelImageDataset([tmp_path / "flat.png"], np.ones((1, 2)), ["flat"], image_size=8)
    image = ds[0]["image"]
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(image[:, 4, 4], torch.tensor(expected), atol=1e-5, rtol=0)


def test_training_view_is_the_recorded_box_of_the_source(tmp_path):
    transform = RecordedImageAugment(16, crop_scale=(0.2, 0.6), hflip=True, vflip=True)
    ds = _dataset(tmp_path, transform=transform)
    source = Image.open(tmp_path / "a.jpg").convert("RGB")
    for seed in range(4):
        item = ds[(0, seed, False)]
        top, left, h, w = item["aug"]["crop"].tolist()
        assert 0 <= top and 0 <= left and top + h <= 16 and left + w <= 16 and (h, w) != (16, 16)
        view = render_view(source, 16, (top, left, h, w))
        if item["aug"]["flip"]:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if item["aug"]["vflip"]:
            view = view.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        expected = torch.from_numpy(np.array(view)).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]
        expected = expected / torch.tensor(IMAGENET_STD)[:, None, None]
        torch.testing.assert_close(item["image"], expected, atol=1e-5, rtol=0)
    # Same seed, same draws; the record is the one RecordedSpatialAugment draws for an S x S image.
    a, b = ds[(0, 77, False)], ds[(0, 77, False)]
    torch.testing.assert_close(a["image"], b["image"])
    reference = RecordedSpatialAugment(crop_scale=(0.2, 0.6), hflip=True, vflip=True)(
        {"image": torch.zeros(3, 16, 16)}, generator=torch.Generator().manual_seed(77)
    )["aug"]
    for key in ("crop", "flip", "vflip"):
        assert torch.equal(a["aug"][key], reference[key]), key


def test_crop_keeps_source_detail(tmp_path):
    # Left half black, right half white, at 64 px; the right half of a 16 px frame is pure white.
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255
    Image.fromarray(pixels).save(tmp_path / "halves.png")
    view = np.array(render_view(Image.open(tmp_path / "halves.png").convert("RGB"), 16, (0, 8, 16, 8)))
    assert view.min() == 255


def test_photometric_transforms_from_config_are_seeded_and_spatial_ones_refused(tmp_path):
    spec = [{"name": "ColorJitter", "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1, "p": 1.0}]
    ds = _dataset(tmp_path, transform=RecordedImageAugment(16, hflip=False, photometric=spec))
    plain = _dataset(tmp_path / "plain", transform=RecordedImageAugment(16, hflip=False))
    a, b, c = ds[(0, 5, False)], ds[(0, 5, False)], ds[(0, 6, False)]
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.allclose(a["image"], c["image"])
    assert not torch.allclose(a["image"], plain[(0, 5, False)]["image"])
    with pytest.raises(TypeError, match="HorizontalFlip changes the geometry"):
        RecordedImageAugment(16, photometric=[{"name": "HorizontalFlip"}])
    with pytest.raises(ValueError, match="'Sparkle' is not an albumentations transform"):
        RecordedImageAugment(16, photometric=[{"name": "Sparkle"}])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_unreadable_image_is_an_error_naming_the_file(tmp_path, damage):
    path = write_image(tmp_path / "img.jpg", (64, 64))
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an image at all")
    else:
        path.unlink()
    ds = MultiLabelImageDataset([path], np.ones((1, 2)), ["img"], image_size=8)
    with pytest.raises(DataFormatError, match="img.jpg"):
        ds[0]


def test_seeded_split_is_the_literature_rule_and_deterministic():
    kept, carved = seeded_split(10, 0.2, 1200)
    order = np.random.RandomState(1200).permutation(10)
    assert carved.tolist() == sorted(order[8:].tolist()) and kept.tolist() == sorted(order[:8].tolist())
    again = seeded_split(10, 0.2, 1200)
    assert np.array_equal(kept, again[0]) and np.array_equal(carved, again[1])
    assert not np.array_equal(carved, seeded_split(10, 0.2, 1)[1])
    assert len(seeded_split(7, 0.0, 0)[1]) == 0


def test_datamodule_loaders_use_the_epoch_seeded_sampler(tmp_path):
    from splml.data.datamodules.image_folders import AIDDataModule

    write_aid_tree(tmp_path, n_train=6, n_test=2, size=16)
    dm = AIDDataModule(
        tmp_path, image_size=16, batch_size=4, num_workers=0, persistent_workers=True, seed=9,
        augment={"crop_scale": [0.5, 1.0], "hflip": True},
    )  # fmt: skip
    dm.setup()
    assert (dm.num_classes, dm.num_channels, dm.class_names) == (17, 3, AID_CLASSES)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.sampler.seed == 9
    assert loader.num_workers == 0 and dm.persistent_workers is False
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["aug"]["crop"].shape == (4, 4)
    first = int(batch["index"][0])
    again = dm.datasets["train"][(first, item_seed(9, 0, first), False)]
    torch.testing.assert_close(again["image"], batch["image"][0])
    assert len(next(iter(dm.val_dataloader()))["index"]) == len(dm.datasets["validation"])
    assert "aug" not in next(iter(dm.test_dataloader()))
