"""Retrieval sets (DLRSD, WHDLD) through their configs, and the dataset statistics report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from splml.builders import config_dir, register_resolvers
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.datasets.image_folders import AID_CLASSES, WHDLD_CLASSES
from splml.data.labels import FullLabels
from splml.data.stats import dataset_statistics
from tests.image_support import aid_label_rows, write_aid_tree, write_image
from tests.image_support import data_prep_script as _script


def _datamodule(dataset: str, root: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", f"dataset.root={root}", "dataset.datamodule.image_size=16",
                                          "dataset.datamodule.num_workers=0", "dataset.datamodule.batch_size=3",
                                          "dataset.datamodule.pin_memory=false", *overrides])  # fmt: skip
    return instantiate(cfg.dataset.datamodule, labels=FullLabels(), _convert_="all")


def test_dlrsd_tiff_folders_and_tab_table_with_header_in_any_order(tmp_path):
    stems = [f"{c}{k:02d}" for c in ("agricultural", "harbor") for k in range(5)]
    for k, stem in enumerate(stems):
        write_image(tmp_path / "Images" / stem.rstrip("0123456789") / f"{stem}.tif", (20, 20), seed=k)
    rows = aid_label_rows(stems, seed=4)
    order = sorted(AID_CLASSES)
    lines = ["IMAGE\\LABEL\t" + "\t".join(order)]
    lines += [f"{stem}.tif\t" + "\t".join(str(rows[stem][AID_CLASSES.index(n)]) for n in order) for stem in stems]
    (tmp_path / "multilabels.csv").write_text("\n".join(lines) + "\n")
    dm = _datamodule("dlrsd", tmp_path)
    dm.setup()
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 6, "validation": 2, "test": 2}
    assert dm.display_name == "DLRSD" and dm.class_names == AID_CLASSES
    for ds in dm.datasets.values():
        for sid, target in zip(ds.ids, ds.targets, strict=True):
            assert np.array_equal(target, rows[sid])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["aug"]["vflip"].shape == (3,)
    again = _datamodule("dlrsd", tmp_path)
    again.setup()
    assert again.datasets["test"].ids == dm.datasets["test"].ids, "the query/database split is seeded"


def test_whdld_whitespace_table_without_header(tmp_path):
    stems = [f"wh{k:04d}" for k in range(1, 9)]
    for k, stem in enumerate(stems):
        write_image(tmp_path / "Images" / f"{stem}.jpg", (16, 16), seed=k)
    rng = np.random.default_rng(2)
    matrix = (rng.random((8, 6)) < 0.5).astype(int)
    matrix[:, 3] = 1
    (tmp_path / "multilabels.csv").write_text(
        "".join(f"{s} " + " ".join(map(str, r)) + "\n" for s, r in zip(stems, matrix, strict=True))
    )
    dm = _datamodule("whdld", tmp_path, "dataset.datamodule.test_fraction=0.25")
    dm.setup()
    assert dm.class_names == WHDLD_CLASSES and len(dm.datasets["test"]) == 2
    got = {sid: row for ds in dm.datasets.values() for sid, row in zip(ds.ids, ds.targets, strict=True)}
    assert all(np.array_equal(got[s], r) for s, r in zip(stems, matrix, strict=True))


def test_stats_script_on_aid_writes_tables_and_plot(tmp_path, capsys):
    root = tmp_path / "aid"
    write_aid_tree(root, n_train=10, n_test=4, size=16)
    out = tmp_path / "stats"
    assert _script("dataset_stats").main(["--dataset", "aid", "--root", str(root), "--out", str(out)]) == 0
    assert "aid: train 8 images" in capsys.readouterr().out
    dm = _datamodule("aid", root)
    dm.setup()
    train = dm.datasets["train"].targets
    with (out / "label_frequency.csv").open() as fh:
        freq = list(csv.DictReader(fh))
    assert [r["class"] for r in freq] == list(AID_CLASSES)
    assert [int(r["train_count"]) for r in freq] == train.sum(0).tolist()
    with (out / "labels_per_image.csv").open() as fh:
        hist = {int(r["labels"]): int(r["test"]) for r in csv.DictReader(fh)}
    assert hist == {k: int((dm.datasets["test"].targets.sum(1) == k).sum()) for k in hist}
    with (out / "cooccurrence_train.csv").open() as fh:
        co = np.array([[int(v) for v in r[1:]] for r in list(csv.reader(fh))[1:]])
    assert np.array_equal(co, train.T.astype(int) @ train.astype(int))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"]["mean_labels_per_image"] == pytest.approx(train.sum(1).mean(), abs=1e-4)
    assert (out / "label_statistics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_function_works_on_reben(tiny_reben, tmp_path):
    stats = dataset_statistics(ReBENDataModule(root=tiny_reben, labels=FullLabels()), tmp_path)
    assert stats["train"]["images"] == 48 and stats["test"]["class_counts"].shape == (19,)
    assert (tmp_path / "cooccurrence_validation.csv").is_file()
