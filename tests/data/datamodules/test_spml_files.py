"""SPML literature files: building them from official annotations, reading them, their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from splml.builders import config_dir, register_resolvers
from splml.data.datamodules.spml_files import SPMLFilesDataModule
from splml.data.datasets.spml_files import COCO_CLASSES, VOC_CLASSES
from splml.data.labels import FullLabels, ObservedLabelsFile, RandomSinglePositive
from splml.io.errors import DataFormatError
from tests.image_support import data_prep_script as _script
from tests.image_support import write_image

format_spml = _script("format_spml")

#: COCO's real category ids: 1..90 without the ten unused ones.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def write_coco(root: Path) -> None:
    """Tiny instances_{train,val}2014.json (+ the images) in the official layout."""
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, COCO_CLASSES, strict=True)]
    content = {
        "train": {9: [1, 90], 10: [3], 100: [1, 1, 18], 25: [90], 7: []},  # image id -> category ids
        "val": {1: [5], 2: [1, 3], 3: [64]},
    }
    for split, images in content.items():
        anns = [
            {"id": 1000 * image_id + k, "image_id": image_id, "category_id": c, "iscrowd": int(k == 0)}
            for image_id, cats in images.items() for k, c in enumerate(cats)
        ]  # fmt: skip
        data = {
            "images": [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i in images],
            "annotations": anns,
            "categories": categories,
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
        for i in images:
            write_image(root / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", (20, 16), seed=i)


def write_voc(root: Path) -> Path:
    """ImageSets/Main/<class>_{train,val}.txt with 1 / -1 / 0 (difficult) entries."""
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    entries = {
        "train": {"2008_000002": {"dog": "1"}, "2008_000001": {"aeroplane": "1", "person": "1", "cat": "0"},
                  "2008_000003": {"cat": "0"}},
        "val": {"2009_000001": {"bus": "1"}, "2009_000002": {"sofa": "1", "tvmonitor": "1"}},
    }  # fmt: skip
    for phase, images in entries.items():
        for name in VOC_CLASSES:
            lines = [f"{image_id} {labels.get(name, '-1'):>2}" for image_id, labels in images.items()]
            (main / f"{name}_{phase}.txt").write_text("\n".join(lines) + "\n")
        for image_id in images:
            write_image(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{image_id}.jpg", (18, 12))
    return main


def test_format_coco_follows_the_literature_order_and_categories(tmp_path, capsys):
    write_coco(tmp_path)
    assert format_spml.main(["coco", "--root", str(tmp_path), "--quiet"]) == 0
    assert "train 4 images" in capsys.readouterr().out
    images = np.load(tmp_path / "formatted_train_images.npy")
    labels = np.load(tmp_path / "formatted_train_labels.npy")
    # ids ordered as text (10, 100, 25, 9); image 7 has no annotation and is left out
    assert images.tolist() == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (10, 100, 25, 9)]
    assert labels.shape == (4, 80)
    assert np.flatnonzero(labels[1]).tolist() == [0, COCO_IDS.index(18)]  # person, dog (repeats counted once)
    assert np.flatnonzero(labels[3]).tolist() == [0, 79]  # person, toothbrush (crowd annotations count)
    assert (tmp_path / "class_names.txt").read_text().splitlines() == list(COCO_CLASSES)
    assert np.load(tmp_path / "formatted_val_labels.npy")[2, COCO_IDS.index(64)] == 1

    dm = SPMLFilesDataModule(
        tmp_path, name="coco", num_classes=80, image_size=16, batch_size=2, labels=RandomSinglePositive(1)
    )
    dm.setup()
    assert dm.display_name == "COCO 2014" and dm.class_names == COCO_CLASSES
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 3, "validation": 1, "test": 3}
    carved = np.random.RandomState(1200).permutation(4)[-1]
    assert dm.datasets["validation"].ids == [images[carved]], "80/20 split with seed 1200, as in the literature"
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["observed"].shape == (2, 80)
    assert (batch["observed"].sum(1) == 1).all()


@pytest.mark.parametrize("difficult", ["negative", "positive"])
def test_format_voc_difficult_entries(tmp_path, difficult):
    write_voc(tmp_path)
    assert format_spml.main(["voc", "--root", str(tmp_path), "--difficult", difficult, "--quiet"]) == 0
    images = np.load(tmp_path / "formatted_train_images.npy").tolist()
    labels = np.load(tmp_path / "formatted_train_labels.npy")
    cat = VOC_CLASSES.index("cat")
    if difficult == "negative":  # the literature: only entries equal to 1 are positives
        assert images == ["2008_000001.jpg", "2008_000002.jpg"]
        assert labels[0, cat] == 0
    else:
        assert images == ["2008_000001.jpg", "2008_000002.jpg", "2008_000003.jpg"]
        assert labels[0, cat] == 1 and np.flatnonzero(labels[2]).tolist() == [cat]
    assert np.flatnonzero(labels[0]).tolist()[:1] == [0] and labels[0, VOC_CLASSES.index("person")] == 1
    val = np.load(tmp_path / "formatted_val_labels.npy")
    assert np.flatnonzero(val[1]).tolist() == [VOC_CLASSES.index("sofa"), VOC_CLASSES.index("tvmonitor")]


def test_format_voc_rejects_a_malformed_line(tmp_path, capsys):
    main = write_voc(tmp_path)
    (main / "bus_val.txt").write_text("2009_000001  yes\n")
    assert format_spml.main(["voc", "--root", str(tmp_path), "--quiet"]) == 2
    assert "bus_val.txt, line 1: expected '<image id> <1|-1|0>'" in capsys.readouterr().err


def test_format_cub_reads_312_attributes_and_the_official_split(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    paths = [
        "001.Black_footed_Albatross/a_1.jpg",
        "001.Black_footed_Albatross/a_2.jpg",
        "002.Laysan/b_1.jpg",
        "002.Laysan/b_2.jpg",
    ]
    (cub / "images.txt").write_text("".join(f"{k + 1} {p}\n" for k, p in enumerate(paths)))
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 1\n")
    (tmp_path / "attributes.txt").write_text("".join(f"{a} has_part::value_{a}\n" for a in range(1, 313)))
    rng = np.random.default_rng(0)
    truth = (rng.random((4, 312)) < 0.1).astype(np.uint8)
    lines = [f"{i + 1} {a + 1} {truth[i, a]} 3 1.5" + (" 7" if (i, a) == (2, 5) else "")  # one line with an extra field
             for i in range(4) for a in range(312)]  # fmt: skip
    (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines) + "\n")
    for p in paths:
        write_image(cub / "images" / p, (14, 14))
    assert format_spml.main(["cub", "--root", str(tmp_path), "--keep-empty", "--quiet"]) == 0
    assert np.load(tmp_path / "formatted_train_images.npy").tolist() == [paths[0], paths[2], paths[3]]
    assert np.array_equal(np.load(tmp_path / "formatted_train_labels.npy"), truth[[0, 2, 3]])
    assert np.array_equal(np.load(tmp_path / "formatted_val_labels.npy"), truth[[1]])
    names = (tmp_path / "class_names.txt").read_text().splitlines()
    assert len(names) == 312 and names[0] == "has_part::value_1"
    dm = SPMLFilesDataModule(tmp_path, name="cub", num_classes=312, images_dir="CUB_200_2011/images",
                             image_size=8, labels=FullLabels(), val_fraction=0.34)  # fmt: skip
    dm.setup()
    assert dm.class_names[5] == "has_part::value_6" and dm.datasets["test"][0]["target"].shape == (312,)


def test_format_nuswide_simple_lists(tmp_path, capsys):
    (tmp_path / "train_list.txt").write_text("actor\\0001_1.jpg\nairport\\0002_2.jpg\nzebra/0003_3.jpg\n")
    (tmp_path / "train_labels.txt").write_text("1 0 0\n0 1 1\n0 0 0\n")
    (tmp_path / "test_list.txt").write_text("actor\\0004_4.jpg\n")
    (tmp_path / "test_labels.txt").write_text("1,0,1\n")
    (tmp_path / "concepts.txt").write_text("actor\nairport\nzebra\n")
    args = ["nuswide", "--root", str(tmp_path), "--train-list", str(tmp_path / "train_list.txt"),
            "--train-labels", str(tmp_path / "train_labels.txt"), "--test-list", str(tmp_path / "test_list.txt"),
            "--test-labels", str(tmp_path / "test_labels.txt"), "--concepts", str(tmp_path / "concepts.txt"), "--quiet"]  # fmt: skip
    assert format_spml.main(args) == 0
    assert "1 without labels dropped" in capsys.readouterr().out
    assert np.load(tmp_path / "formatted_train_images.npy").tolist() == ["actor/0001_1.jpg", "airport/0002_2.jpg"]
    assert np.load(tmp_path / "formatted_val_labels.npy").tolist() == [[1, 0, 1]]
    (tmp_path / "test_labels.txt").write_text("1 0 1\n0 0 1\n")
    assert format_spml.main(args) == 2
    assert "test_list.txt lists 1 images but" in capsys.readouterr().err


def _voc_files(root: Path, n_train: int = 5, n_val: int = 2, width: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    labels = (rng.random((n_train, width)) < 0.2).astype(np.uint8)
    labels[np.arange(n_train), np.arange(n_train) % width] = 1
    names = [f"img_{k}.jpg" for k in range(n_train)]
    np.save(root / "formatted_train_images.npy", np.array(names))
    np.save(root / "formatted_train_labels.npy", labels)
    np.save(root / "formatted_val_images.npy", np.array([f"val_{k}.jpg" for k in range(n_val)]))
    np.save(root / "formatted_val_labels.npy", labels[:n_val])
    for name in [*names, *[f"val_{k}.jpg" for k in range(n_val)]]:
        write_image(root / "JPEGImages" / name, (10, 10))
    return labels


def _voc_dm(root: Path, **kwargs) -> SPMLFilesDataModule:
    kwargs.setdefault("labels", FullLabels())
    return SPMLFilesDataModule(root, name="voc", num_classes=20, images_dir="JPEGImages", image_size=8, **kwargs)


def test_format_errors_name_the_file(tmp_path):
    labels = _voc_files(tmp_path)
    np.save(tmp_path / "formatted_train_labels.npy", labels[:, :19])
    with pytest.raises(DataFormatError, match=r"formatted_train_labels\.npy: rows have 19 labels, expected 20"):
        _voc_dm(tmp_path).setup()
    np.save(tmp_path / "formatted_train_labels.npy", labels[:4])
    with pytest.raises(
        DataFormatError,
        match=r"formatted_train_images\.npy lists 5 images but .*formatted_train_labels\.npy has 4 rows",
    ):
        _voc_dm(tmp_path).setup()
    bad = labels.copy()
    bad[2, 3] = 2
    np.save(tmp_path / "formatted_train_labels.npy", bad)
    with pytest.raises(DataFormatError, match=r"formatted_train_labels\.npy: row 2, column 3 holds 2"):
        _voc_dm(tmp_path).setup()
    np.save(tmp_path / "formatted_train_labels.npy", labels)
    np.save(tmp_path / "formatted_val_images.npy", np.array(["val_0.jpg", None], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match=r"formatted_val_images\.npy: holds Python objects"):
        _voc_dm(tmp_path).setup()


def test_missing_images_error_or_skip(tmp_path):
    _voc_files(tmp_path)
    (tmp_path / "JPEGImages" / "img_3.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"img_3\.jpg \(image not found under .*JPEGImages\)"):
        _voc_dm(tmp_path).setup()
    dm = _voc_dm(tmp_path, skip_bad=True)
    dm.setup()
    assert "img_3.jpg" not in dm.datasets["train"].ids + dm.datasets["validation"].ids
    assert dm.skipped == [("img_3.jpg", f"image not found under {tmp_path / 'JPEGImages'}")]


def test_observed_labels_file_is_used_through_a_label_source(tmp_path):
    labels = _voc_files(tmp_path)
    obs = np.where(labels > 0, 0, -1).astype(np.float32)
    obs[np.arange(5), np.arange(5)] = 1
    np.save(tmp_path / "formatted_train_labels_obs.npy", obs)
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=voc", f"dataset.root={tmp_path}", "dataset.datamodule.images_dir=JPEGImages",
            "dataset.datamodule.image_size=8", "labels=observed_file",
            f"labels.file={tmp_path / 'formatted_train_labels_obs.npy'}",
        ])  # fmt: skip
    source = instantiate(cfg.labels)
    assert isinstance(source, ObservedLabelsFile) and source.images_file == tmp_path / "formatted_train_images.npy"
    dm = instantiate(cfg.dataset.datamodule, labels=source, _convert_="all")
    dm.setup()
    train = dm.datasets["train"]
    rows = [int(sid.split("_")[1].split(".")[0]) for sid in train.ids]
    assert np.array_equal(train.observed, obs[rows])
    assert dm.class_names == VOC_CLASSES

    obs[0, 0] = 0.5
    np.save(tmp_path / "formatted_train_labels_obs.npy", obs)
    with pytest.raises(DataFormatError, match=r"formatted_train_labels_obs\.npy: row 0, column 0 holds 0.5"):
        _voc_dm(tmp_path, labels=ObservedLabelsFile(tmp_path / "formatted_train_labels_obs.npy")).setup()


@pytest.mark.parametrize(
    ("dataset", "classes", "k", "em"),
    [("voc", 20, 1.5, (0.2, 0.02, 5)), ("coco", 80, 2.9, (0.1, 0.9, 5)), ("nuswide", 81, 1.9, (0.1, 0.2, 4)),
     ("cub", 312, 31.4, (0.01, 0.4, 3)), ("aid", 17, None, None), ("mlaid", 17, None, None),
     ("dlrsd", 17, None, None), ("whdld", 6, None, None)],
)  # fmt: skip
def test_dataset_configs_carry_their_defaults(dataset, classes, k, em):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", "loss=em_apl"])
    assert cfg.dataset.num_classes == classes and cfg.dataset.datamodule.seed == cfg.seed
    assert str(cfg.dataset.root).endswith(f"/{dataset}") and cfg.dataset.datamodule.root == cfg.dataset.root
    for key in ("num_workers", "pin_memory", "persistent_workers", "augment", "image_size"):
        assert key in cfg.dataset.datamodule, key
    if k is not None:
        assert cfg.dataset.expected_positives == k
        assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.warmup) == em
        assert cfg.dataset.datamodule.image_size == 448 and cfg.dataset.datamodule.split_seed == 1200
    dm = instantiate(cfg.dataset.datamodule, labels=FullLabels(), _convert_="all")
    assert dm.num_classes == classes and len(dm.class_names) == classes and dm.num_channels == 3


def test_training_image_without_labels_is_reported(tmp_path):
    labels = _voc_files(tmp_path)
    labels[4] = 0
    np.save(tmp_path / "formatted_train_labels.npy", labels)
    with pytest.raises(DataFormatError, match=r"img_4\.jpg \(training image without any positive label\)"):
        _voc_dm(tmp_path, labels=RandomSinglePositive()).setup()
    dm = _voc_dm(tmp_path, labels=RandomSinglePositive(), skip_bad=True)
    dm.setup()
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 4
