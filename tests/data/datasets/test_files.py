"""Inputs outside a dataset (image files, lists, folders) prepared as the training datasets prepare theirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splml.data.datasets.files import (
    ImageFilesDataset,
    collate_inputs,
    image_files,
    input_kind,
    listed_files,
    read_input,
)
from splml.data.datasets.images import IMAGENET_MEAN, IMAGENET_STD, RGB_BANDS, MultiLabelImageDataset
from splml.io.checkpoint import DataSpec
from splml.io.errors import DataFormatError

from ...image_support import write_image


def rgb_spec(size: int = 32, resize: str = "bilinear") -> DataSpec:
    return DataSpec(
        task="classification", class_names=("a", "b"), bands=RGB_BANDS, image_size=size, resize=resize,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, value_scale=1 / 255, value_range={"rgb": (0.0, 255.0)},
        input_format="rgb", backbone="resnet10t", head="SpatialLinearHead",
    )  # fmt: skip


@pytest.mark.parametrize(("name", "mode"), [("a.jpg", "RGB"), ("b.png", "RGB"), ("c.png", "L"), ("d.tif", "RGB")])
def test_an_rgb_file_is_the_tensor_the_training_dataset_gives(tmp_path, name, mode):
    path = write_image(tmp_path / name, (50, 30), mode=mode)
    dataset = MultiLabelImageDataset([path], np.zeros((1, 2)), ["x"], image_size=32, interpolation="bicubic")
    assert torch.equal(read_input(path, rgb_spec(resize="bicubic")), dataset[0]["image"])


def test_folders_lists_and_what_an_input_names(tmp_path, caplog):
    write_image(tmp_path / "imgs" / "z" / "b.png")
    write_image(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    paths, ids = image_files(tmp_path / "imgs")
    assert ids == ["a.jpg", "z/b.png"] and paths[1] == tmp_path / "imgs" / "z" / "b.png"
    assert "1 file(s) without an image suffix" in caplog.text and "notes.txt" in caplog.text  # said, not dropped
    assert input_kind(tmp_path / "imgs") == "folder" and input_kind(paths[0]) == "file"
    listing = tmp_path / "list.csv"
    listing.write_text("id,path\nfirst,imgs/a.jpg\nsecond,imgs/z/b.png\n")
    assert input_kind(listing) == "list"
    assert listed_files(listing) == (
        [tmp_path / "imgs" / "a.jpg", tmp_path / "imgs" / "z" / "b.png"],
        ["first", "second"],
    )
    listing.write_text("path\nimgs/a.jpg\nimgs/a.jpg\n")
    with pytest.raises(DataFormatError, match=r"list.csv: ids listed more than once: \['imgs/a.jpg'\]"):
        listed_files(listing)
    with pytest.raises(FileNotFoundError, match="input not found"):
        input_kind(tmp_path / "missing")


def test_skipping_carries_the_reason_into_the_batch(tmp_path):
    good = write_image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    files = [good, bad, tmp_path / "gone.png"]
    with pytest.raises(DataFormatError, match="bad.png: cannot decode the image"):
        ImageFilesDataset(files, ["g", "b", "x"], rgb_spec())[1]
    dataset = ImageFilesDataset(files, ["g", "b", "x"], rgb_spec(), on_error="skip")
    batch = collate_inputs([dataset[i] for i in range(3)])
    assert batch["image"].shape == (1, 3, 32, 32) and batch["index"].tolist() == [0]
    assert [i for i, _ in batch["failed"]] == [1, 2] and "image file not found" in batch["failed"][1][1]
