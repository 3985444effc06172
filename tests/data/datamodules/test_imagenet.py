"""dataset=imagenet on a tiny tree in the real layouts: class order, the three validation layouts, ReaL, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from splml.data.datamodules.imagenet import ImageNetDataModule
from splml.data.datasets.imagenet import ImageNetTrainAugment, decode_rgb
from splml.data.labels import DatasetSinglePositive
from splml.io.errors import DataFormatError
from splml.io.imagenet import read_devkit_meta, read_real_labels

from ...imagenet_support import DEVKIT_IDS, REAL, VAL_CLASSES, WNIDS, write_imagenet, write_jpeg


def datamodule(root, **options) -> ImageNetDataModule:
    options = {"num_classes": 4, "labels": DatasetSinglePositive(), "val_fraction": 0.25, "image_size": 32, **options}
    dm = ImageNetDataModule(root, **options)
    dm.setup()
    return dm


@pytest.mark.parametrize("layout", ["folders", "devkit", "loc"])
def test_every_validation_layout_gives_the_same_test_split(tmp_path, layout):
    dm = datamodule(write_imagenet(tmp_path / layout, layout))
    assert dm.class_names == WNIDS  # sorted synset ids: n01440764 = 0
    test = dm.datasets["test"]
    assert test.ids == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 9)]
    assert test.original_labels.tolist() == list(VAL_CLASSES)
    # ReaL label sets as targets, in the sorted-WNID order of real.json; empty lists left out and counted.
    assert [np.flatnonzero(row).tolist() for row in test.targets] == [sorted(x) for x in REAL]
    assert test.has_target.tolist() == [len(x) > 0 for x in REAL]
    item = test[2]
    assert item["has_target"] is False and item["original_label"] == 2 and item["image"].shape == (3, 32, 32)
    # Training: one folder per class, the ImageNet label is the observed single positive.
    train, val = dm.datasets["train"], dm.datasets["validation"]
    assert len(train) + len(val) == 16 and len(val) == 4
    np.testing.assert_array_equal(train.observed, train.targets.astype(np.float32))
    assert val.original_labels.tolist() == val.targets.argmax(1).tolist() and val.has_target.all()


def test_devkit_ids_are_mapped_to_the_sorted_class_order(tmp_path):
    root = write_imagenet(tmp_path, "devkit")
    id_to_wnid = read_devkit_meta(root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat")
    assert id_to_wnid == {v: k for k, v in DEVKIT_IDS.items()}  # the inner node (num_children 2) is no class
    assert DEVKIT_IDS[WNIDS[0]] != 1  # the fixture's devkit order differs from the sorted one, as the real devkit's


def test_val_fraction_zero_validates_on_the_official_validation_set(tmp_path):
    dm = datamodule(write_imagenet(tmp_path), val_fraction=0.0)
    assert len(dm.datasets["train"]) == 16
    assert dm.datasets["validation"] is dm.datasets["test"]


def test_a_missing_validation_image_is_named_or_skipped(tmp_path):
    root = write_imagenet(tmp_path, "devkit")
    (root / "val" / "ILSVRC2012_val_00000004.JPEG").unlink()
    with pytest.raises(DataFormatError, match="ILSVRC2012_val_00000004.*image not found"):
        datamodule(root)
    dm = datamodule(root, skip_bad=True)
    assert "ILSVRC2012_val_00000004" not in dm.datasets["test"].ids and len(dm.datasets["test"]) == 7
    assert dm.skipped == [("ILSVRC2012_val_00000004", f"image not found in {root / 'val'}")]
    dm.save_observed_labels(tmp_path / "run")
    assert "ILSVRC2012_val_00000004" in (tmp_path / "run" / "skipped_items.csv").read_text()


def test_a_real_entry_whose_image_is_missing_is_an_error(tmp_path):
    root = write_imagenet(tmp_path, real=[*REAL, [1]])  # entry 9: no ILSVRC2012_val_00000009.JPEG
    with pytest.raises(DataFormatError, match="ILSVRC2012_val_00000009"):
        datamodule(root)


def test_a_validation_image_without_a_real_entry_is_named_or_left_out_of_real(tmp_path):
    root = write_imagenet(tmp_path, real=REAL[:7])  # image 8 has no entry
    with pytest.raises(DataFormatError, match="ILSVRC2012_val_00000008.*no entry in real.json"):
        datamodule(root)
    test = datamodule(root, skip_bad=True).datasets["test"]
    assert len(test) == 8 and test.has_target.tolist()[-1] is False  # kept for top-1, out of the ReaL metrics
    assert test.original_labels[-1] == VAL_CLASSES[-1]


def test_real_json_errors_name_the_entry_and_its_image(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[0], [1, 7]]))
    with pytest.raises(DataFormatError, match=r"entry 1 \(ILSVRC2012_val_00000002\).*\[7\] outside 0..3"):
        read_real_labels(path, 4)
    path.write_text(json.dumps([[0], "1"]))
    with pytest.raises(DataFormatError, match="entry 1"):
        read_real_labels(path, 4)
    path.write_text(json.dumps([[2, 2]]))
    with pytest.raises(DataFormatError, match="listed twice"):
        read_real_labels(path, 4)


def test_class_folders_must_match_num_classes(tmp_path):
    root = write_imagenet(tmp_path)
    shutil.rmtree(root / "train" / WNIDS[3])
    with pytest.raises(DataFormatError, match="3 class folders but dataset.num_classes is 4"):
        datamodule(root)


def test_a_validation_image_of_an_unknown_class_is_an_error(tmp_path):
    root = write_imagenet(tmp_path, "loc")
    text = (root / "LOC_val_solution.csv").read_text().replace(WNIDS[2], "n09999999")
    (root / "LOC_val_solution.csv").write_text(text)
    with pytest.raises(DataFormatError, match="n09999999"):
        datamodule(root)


def test_a_corrupt_jpeg_is_a_named_error_when_read(tmp_path):
    root = write_imagenet(tmp_path)
    bad = root / "val" / WNIDS[1] / "ILSVRC2012_val_00000002.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    dm = datamodule(root)
    with pytest.raises(DataFormatError, match="ILSVRC2012_val_00000002.JPEG.*cannot decode"):
        dm.datasets["test"][1]
    assert dm.datasets["test"][0]["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("mode", ["L", "CMYK", "PNG"])
def test_grayscale_cmyk_and_png_data_under_a_jpeg_name_decode_to_rgb(tmp_path, mode):
    path = write_jpeg(tmp_path / "x.JPEG", (20, 10), mode=mode)
    image = decode_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 10)
    with Image.open(path) as reference:
        np.testing.assert_allclose(np.asarray(image, float), np.asarray(reference.convert("RGB"), float), atol=3)


def test_training_crop_is_drawn_in_source_pixels_and_recorded_in_the_frame(tmp_path):
    path = write_jpeg(tmp_path / "x.JPEG", (64, 48), seed=3)
    source = decode_rgb(path)
    augment = ImageNetTrainAugment(32, crop_scale=(0.1, 0.5), hflip=False)
    out = augment({"image": source}, generator=torch.Generator().manual_seed(0))
    top, left, h, w = out["aug"]["crop"].tolist()
    assert (h, w) != (32.0, 32.0)
    # Back to source pixels: whole pixels, and the rendered view is that box of the source resized.
    box = np.array([top * 48 / 32, left * 64 / 32, h * 48 / 32, w * 64 / 32])
    np.testing.assert_allclose(box, np.round(box), atol=1e-4)
    t, l_, hh, ww = (round(float(v)) for v in box)
    expected = np.asarray(source.crop((l_, t, l_ + ww, t + hh)).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out["image"], expected)
    # The same generator seed repeats the draw (resumed runs see the same crops).
    again = augment({"image": source}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["aug"]["crop"], out["aug"]["crop"])


def test_evaluation_view_is_the_centre_crop(tmp_path):
    root = write_imagenet(tmp_path, size=60)
    dm = datamodule(root, eval_crop_fraction=0.5)
    test = dm.datasets["test"]
    source = decode_rgb(test.image_paths[0])  # 54 x 60: the central 27 x 27 square
    expected = source.resize((32, 32), Image.Resampling.BILINEAR, box=(13, 16, 40, 43))
    np.testing.assert_array_equal(test.display_image(0), np.asarray(expected))


def test_labels_observed_refuses_images_with_several_labels():
    with pytest.raises(ValueError, match="exactly one label.*b with 2"):
        DatasetSinglePositive().observe(np.array([[1, 0], [1, 1]]), ids=["a", "b"], class_names=["x", "y"])


def test_verify_script_stops_on_a_missing_image_without_skip_bad(tmp_path):
    from ...image_support import data_prep_script

    root = write_imagenet(tmp_path / "imagenet", "devkit")
    (root / "val" / "ILSVRC2012_val_00000005.JPEG").unlink()
    with pytest.raises(DataFormatError, match="ILSVRC2012_val_00000005"):
        data_prep_script("verify_imagenet").main(["--root", str(root), "--num-classes", "4", "--workers", "1"])


def test_verify_script_reports_every_problem_with_skip_bad(tmp_path, capsys):
    from ...image_support import data_prep_script

    root = write_imagenet(tmp_path / "imagenet", "devkit")
    (root / "val" / "ILSVRC2012_val_00000005.JPEG").unlink()
    bad = root / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "report"
    args = ["--root", str(root), "--num-classes", "4", "--workers", "1", "--out", str(out), "--skip-bad"]
    assert data_prep_script("verify_imagenet").main(args) == 1
    rows = (out / "bad_images.csv").read_text().splitlines()
    assert rows[0] == "item,reason" and len(rows) == 3
    assert rows[1].startswith("ILSVRC2012_val_00000005,image not found")
    assert str(bad) in rows[2] and "cannot decode" in rows[2]
    summary = capsys.readouterr().out
    assert "16 training and 7 validation images" in summary and "2 problem(s)" in summary
