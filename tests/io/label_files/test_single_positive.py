"""Single-positive label files: written from the label sources, loaded back exactly, bad files refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from splml.builders import config_dir
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.datasets.reben import ReBENDataset
from splml.data.labels import DominantSinglePositive, RandomSinglePositive
from splml.data.synthetic import SyntheticConfig, generate_synthetic_reben
from splml.io.reben.format import CLASS_NAMES
from splml.io.reben.lmdb import close_lmdb
from splml.io.reben.metadata import reference_map_to_class_counts

SCRIPT = Path(__file__).resolve().parents[3] / "data_prep" / "make_single_positive_labels.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_single_positive_labels_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def label_files(tiny_reben: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labels")
    assert _script().main(["--root", str(tiny_reben), "--out", str(out), "--seed", "5", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def train(tiny_reben: Path):
    ds = ReBENDataset(tiny_reben, "train", bands="rgb")
    yield ds
    close_lmdb(ds.lmdb_path)


def _ids(ds: ReBENDataset) -> list[str]:
    return [r.patch_id for r in ds.records]


def test_files_equal_the_simulated_labels(label_files: Path, train: ReBENDataset):
    ids = _ids(train)
    counts = lambda i: reference_map_to_class_counts(train.read_reference_map(i))
    expected = {
        "random": RandomSinglePositive(seed=5).observe(train.targets, ids=ids, class_names=CLASS_NAMES),
        "dominant": DominantSinglePositive().observe(
            train.targets, ids=ids, class_names=CLASS_NAMES, class_counts=counts
        ),
    }
    loaded = {
        "random": RandomSinglePositive(seed=999, file=label_files / "train_random_single_labels.npy"),
        "dominant": DominantSinglePositive(file=label_files / "train_dominant_single_labels.npy"),
    }
    for mode, source in loaded.items():
        raw = np.load(label_files / f"train_{mode}_single_labels.npy")
        assert raw.dtype == np.float32 and raw.shape == (len(train), len(CLASS_NAMES))
        # Loading needs no maps and ignores the seed: it returns the file.
        got = source.observe(train.targets, ids=ids, class_names=CLASS_NAMES)
        np.testing.assert_array_equal(got, expected[mode], err_msg=mode)
        assert got.dtype == np.float32
    csv_rows = (label_files / "train_dominant_single_labels.csv").read_text().splitlines()
    assert csv_rows[0] == "id,observed_positives" and csv_rows[1].startswith(ids[0] + ",")


def test_datamodule_trains_on_the_file(tiny_reben: Path, label_files: Path):
    dm = ReBENDataModule(
        tiny_reben, bands="rgb", labels=RandomSinglePositive(file=label_files / "train_random_single_labels.npy")
    )
    dm.setup()
    simulated = ReBENDataModule(tiny_reben, bands="rgb", labels=RandomSinglePositive(seed=5))
    simulated.setup()
    np.testing.assert_array_equal(dm.datasets["train"].observed, simulated.datasets["train"].observed)
    close_lmdb(dm.datasets["train"].lmdb_path)


def test_configs_default_to_no_file():
    for name in ("random", "dominant"):
        assert OmegaConf.load(config_dir() / "labels" / f"{name}.yaml").file is None


def _copy(label_files: Path, tmp_path: Path, observed: np.ndarray, csv: bool = False) -> Path:
    f = tmp_path / "train_random_single_labels.npy"
    np.save(f, observed)
    if csv:
        (tmp_path / f.with_suffix(".csv").name).write_text((label_files / "train_random_single_labels.csv").read_text())
    return f


def test_wrong_shape_names_file_and_both_shapes(label_files: Path, train: ReBENDataset, tmp_path: Path):
    good = np.load(label_files / "train_random_single_labels.npy")
    f = _copy(label_files, tmp_path, good[:-1])
    n = len(train)
    with pytest.raises(ValueError, match=rf"{f.name}: shape \({n - 1}, 19\).*shape \({n}, 19\)"):
        RandomSinglePositive(file=f).observe(train.targets, ids=_ids(train), class_names=CLASS_NAMES)


def test_two_positives_name_the_row_and_id(label_files: Path, train: ReBENDataset, tmp_path: Path):
    bad = np.load(label_files / "train_random_single_labels.npy")
    row = 3
    bad[row] = 0
    bad[row, np.flatnonzero(train.targets[row])[:1]] = 1
    bad[row, np.flatnonzero(train.targets[row] == 0)[:1]] = 1
    f = _copy(label_files, tmp_path, bad)
    pid = train.records[row].patch_id
    with pytest.raises(ValueError, match=rf"row {row} \(id {pid}\): expected exactly one positive, got 2"):
        DominantSinglePositive(file=f).observe(train.targets, ids=_ids(train), class_names=CLASS_NAMES)


def test_positive_outside_true_labels_is_refused(label_files: Path, train: ReBENDataset, tmp_path: Path):
    bad = np.load(label_files / "train_random_single_labels.npy")
    row = 5
    bad[row] = 0
    bad[row, np.flatnonzero(train.targets[row] == 0)[0]] = 1
    f = _copy(label_files, tmp_path, bad)
    with pytest.raises(ValueError, match=rf"row {row} .*not among its true labels"):
        RandomSinglePositive(file=f).observe(train.targets, ids=_ids(train), class_names=CLASS_NAMES)


def test_non_binary_values_and_reordered_ids_are_refused(label_files: Path, train: ReBENDataset, tmp_path: Path):
    good = np.load(label_files / "train_random_single_labels.npy")
    bad = good.copy()
    bad[0, np.argmax(bad[0])] = 0.5
    f = _copy(label_files, tmp_path, bad)
    with pytest.raises(ValueError, match=r"row 0 .*0 or 1, got \[0.5\]"):
        RandomSinglePositive(file=f).observe(train.targets, ids=_ids(train), class_names=CLASS_NAMES)
    # Right shape and valid rows, but the CSV next to it says the order is another one.
    f = _copy(label_files, tmp_path, good, csv=True)
    ids = _ids(train)
    swapped = [ids[1], ids[0], *ids[2:]]
    with pytest.raises(ValueError, match=r"\.csv, row 0: id .*another sample order"):
        RandomSinglePositive(file=f).observe(train.targets, ids=swapped, class_names=CLASS_NAMES)


def test_missing_file_is_a_clear_error(train: ReBENDataset, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="make_single_positive_labels"):
        RandomSinglePositive(file=tmp_path / "nope.npy").observe(
            train.targets, ids=_ids(train), class_names=CLASS_NAMES
        )


def test_dominant_without_maps_is_refused_random_still_written(tmp_path: Path):
    root = generate_synthetic_reben(
        tmp_path / "nomaps",
        SyntheticConfig(n_train=6, n_validation=2, n_test=2, seed=1, with_reference_maps=False),
        progress=False,
    )
    script = _script()
    assert script.main(["--root", str(root), "--out", str(tmp_path / "a"), "--modes", "dominant", "--quiet"]) == 1
    assert script.main(["--root", str(root), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "single_positive_labels.json", "train_random_single_labels.csv", "train_random_single_labels.npy",
    ]  # fmt: skip
