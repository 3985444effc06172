"""AID-multilabel on tiny files in the real layout: indexing, splits, reports, label sources, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splml.data.datamodules.image_folders import AIDDataModule
from splml.data.datasets.image_folders import AID_CLASSES, read_label_table
from splml.data.labels import DominantSinglePositive, FullLabels, ManualSinglePositive
from splml.io.errors import DataFormatError
from tests.image_support import data_prep_script as _script
from tests.image_support import write_aid_csv, write_aid_tree, write_image


@pytest.fixture(scope="module")
def aid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aid")
    write_aid_tree(root, n_train=10, n_test=4)
    return root


def _dm(root: Path, **kwargs) -> AIDDataModule:
    kwargs.setdefault("labels", FullLabels())
    return AIDDataModule(root, image_size=16, batch_size=4, **kwargs)


def test_splits_labels_and_batch(aid_root):
    dm = _dm(aid_root, augment={"crop_scale": [0.5, 1.0], "hflip": True, "vflip": True})
    dm.setup()
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes == {"train": 8, "validation": 2, "test": 4}
    assert all(i.startswith(("airport_", "beach_", "storagetanks_")) for i in dm.datasets["train"].ids)
    assert {i for i in dm.datasets["test"].ids} == {
        f"{s}_{n}" for s, n in zip(("airport", "beach", "storagetanks", "airport"), range(101, 105))
    }
    table = read_label_table(aid_root / "multilabel.csv", AID_CLASSES)
    row_of = dict(zip(table.ids, table.matrix, strict=True))
    for ds in dm.datasets.values():
        for sid, target in zip(ds.ids, ds.targets, strict=True):
            assert np.array_equal(target, row_of[sid])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["target"].shape == (4, 17)
    assert set(batch["aug"]) == {"crop", "flip", "vflip"}

    again = _dm(aid_root)
    again.setup()
    assert again.datasets["validation"].ids == dm.datasets["validation"].ids, "the carve is deterministic"
    other = _dm(aid_root, split_seed=7)
    other.setup()
    assert other.datasets["validation"].ids != dm.datasets["validation"].ids


def test_corrected_file_with_other_column_order_or_no_header(aid_root, tmp_path):
    table = read_label_table(aid_root / "multilabel.csv", AID_CLASSES)
    order = list(reversed(AID_CLASSES))
    lines = ["IMAGE\\LABEL," + ",".join(n.replace("-", " ").title() for n in order)]
    lines += [sid + "," + ",".join(str(int(row[AID_CLASSES.index(n)])) for n in order)
              for sid, row in zip(table.ids, table.matrix, strict=True)]  # fmt: skip
    (tmp_path / "multilabel_correct_final.csv").write_text("\n".join(lines) + "\n")
    reread = read_label_table(tmp_path / "multilabel_correct_final.csv", AID_CLASSES)
    assert reread.ids == table.ids and np.array_equal(reread.matrix, table.matrix)
    write_aid_csv(tmp_path / "plain.csv", dict(zip(table.ids, table.matrix, strict=True)), header=False)
    assert np.array_equal(read_label_table(tmp_path / "plain.csv", AID_CLASSES).matrix, table.matrix)


def test_bad_label_rows_are_errors_naming_file_and_line(tmp_path):
    header = "IMAGE\\LABEL," + ",".join(AID_CLASSES)
    (tmp_path / "short.csv").write_text(f"{header}\nairport_1," + ",".join(["0"] * 16) + "\n")
    with pytest.raises(DataFormatError, match=r"short\.csv, line 2: expected 18 fields"):
        read_label_table(tmp_path / "short.csv", AID_CLASSES)
    (tmp_path / "value.csv").write_text(f"{header}\nairport_1,2," + ",".join(["0"] * 16) + "\n")
    with pytest.raises(
        DataFormatError, match=r"value\.csv, line 2 \(image airport_1\): value '2' for class 'airplane'"
    ):
        read_label_table(tmp_path / "value.csv", AID_CLASSES)
    (tmp_path / "names.csv").write_text("IMAGE\\LABEL," + ",".join(["ufo", *AID_CLASSES[1:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"names\.csv, line 1: header columns \['ufo'\]"):
        read_label_table(tmp_path / "names.csv", AID_CLASSES)


def test_unmatched_images_and_rows_error_or_skip_with_report(tmp_path):
    rows = write_aid_tree(tmp_path, n_train=10, n_test=4)
    write_image(tmp_path / "images_tr" / "Beach" / "beach_999.jpg", (16, 16))  # no label row
    write_aid_csv(tmp_path / "multilabel.csv", {**rows, "pond_5": rows["airport_1"]})  # row without image
    with pytest.raises(DataFormatError) as err:
        _dm(tmp_path).setup()
    message = str(err.value)
    assert "images_tr/Beach/beach_999.jpg (image without a row in multilabel.csv)" in message
    assert "pond_5 (row of multilabel.csv (line 16) without an image)" in message
    assert "skip_bad=true" in message

    dm = _dm(tmp_path, skip_bad=True)
    dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 14
    run = tmp_path / "run"
    dm.save_observed_labels(run)
    with (run / "skipped_items.csv").open() as fh:
        skipped = list(csv.DictReader(fh))
    assert {r["item"] for r in skipped} == {"images_tr/Beach/beach_999.jpg", "pond_5"}
    with (run / "data_splits.csv").open() as fh:
        splits = list(csv.DictReader(fh))
    assert len(splits) == 14 and splits[0]["path"].startswith("images_tr/")


def test_manual_single_positives_by_stem_name_or_index(aid_root, tmp_path):
    pool = _dm(aid_root)
    pool_sources, _ = pool.load_sources()
    lines = ["image,label"]
    chosen = {}
    for k, (sid, row) in enumerate(zip(pool_sources.ids, pool_sources.targets, strict=True)):
        c = int(np.flatnonzero(row)[-1])
        chosen[sid] = c
        lines.append(f"{sid},{AID_CLASSES[c] if k % 2 else c}")  # names and indices mixed
    manual = tmp_path / "single_positive_labels_manual.csv"
    manual.write_text("\n".join(lines) + "\n")
    dm = _dm(aid_root, labels=ManualSinglePositive(manual))
    dm.setup()
    train = dm.datasets["train"]
    for sid, observed in zip(train.ids, train.observed, strict=True):
        assert np.flatnonzero(observed).tolist() == [chosen[sid]]
    assert np.array_equal(dm.datasets["validation"].observed, dm.datasets["validation"].targets)

    manual.write_text("\n".join([*lines[:3], f"{lines[3].split(',')[0]},volcano", *lines[4:]]) + "\n")
    with pytest.raises(
        ValueError, match=r"line 4, column 2 \(class\): class 'volcano' is neither a class name nor an index"
    ):
        _dm(aid_root, labels=ManualSinglePositive(manual)).setup()


def test_dominant_labels_are_refused_because_aid_has_no_maps(aid_root):
    with pytest.raises(
        ValueError, match="labels=dominant is not defined for AID-multilabel: AID-multilabel has no reference maps"
    ):
        _dm(aid_root, labels=DominantSinglePositive()).setup()


def test_index_script_writes_the_datamodule_splits_and_report(aid_root, tmp_path, capsys):
    index_aid = _script("index_aid")
    stray = write_image(aid_root / "images_test" / "Beach" / "beach_555.jpg", (16, 16))
    try:
        assert index_aid.main(["--root", str(aid_root), "--out", str(tmp_path), "--verify", "--quiet"]) == 0
        assert index_aid.main(["--root", str(aid_root), "--out", str(tmp_path), "--strict", "--quiet"]) == 1
    finally:
        stray.unlink()
    summary = capsys.readouterr().out
    assert "indexed 14 images (train 8, validation 2, test 4); 1 problem(s)" in summary
    dm = _dm(aid_root)
    dm.setup()
    for split in ("train", "validation", "test"):
        with (tmp_path / f"{split}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["stem"] for r in rows] == dm.datasets[split].ids
        first = rows[0]
        assert (aid_root / first["path"]).is_file()
        expected = [AID_CLASSES[c] for c in np.flatnonzero(dm.datasets[split].targets[0])]
        assert first["labels"].split(";") == expected
    assert "images_test/Beach/beach_555.jpg" in (tmp_path / "unmatched.csv").read_text()


def test_train_cli_on_aid_writes_results(aid_root, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "dataset=aid", f"dataset.root={aid_root}", "labels=random",
         "backbone=resnet10t", "trainer.max_epochs=1", "dataset.datamodule.image_size=64",
         "dataset.datamodule.num_workers=0", "dataset.datamodule.batch_size=4", "dataset.datamodule.pin_memory=false",
         "~callbacks.progress_bar", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["dataset"] == "aid"
    assert results["class_names"] == list(AID_CLASSES) and results["test/num_samples"] == 4
    observed = np.load(run_dir / "observed_train_labels.npy")
    assert observed.shape == (8, 17) and (observed.sum(1) == 1).all()
    assert (run_dir / "data_splits.csv").is_file()
