"""The reBEN reader on files in the real format, and its errors on broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.numpy
import torch

from splml.data.datasets.reben import ReBENDataset
from splml.io.errors import DataFormatError
from splml.io.reben.format import BAND_SETS, BAND_STATS, CLASS_INDEX, resolve_band_set
from splml.io.reben.lmdb import close_lmdb, open_lmdb
from splml.io.reben.metadata import read_metadata


@pytest.mark.parametrize("bands", sorted(BAND_SETS))
def test_band_sets_give_expected_channels(tiny_reben, bands):
    ds = ReBENDataset(tiny_reben, "validation", bands=bands)
    item = ds[0]
    assert item["image"].shape == (len(BAND_SETS[bands]), 120, 120)
    assert item["image"].dtype == torch.float32
    assert torch.isfinite(item["image"]).all()


def test_labels_follow_original_class_order(tiny_reben):
    ds = ReBENDataset(tiny_reben, "train", bands="rgb")
    for i, rec in enumerate(ds.records):
        expected = sorted(CLASS_INDEX[n] for n in rec.labels)
        assert np.flatnonzero(ds.targets[i]).tolist() == expected


def test_normalisation_and_upsampling_match_the_raw_values(tiny_reben):
    ds = ReBENDataset(tiny_reben, "train", bands=["B01", "B02", "VV"], normalize=True)
    raw = ReBENDataset(tiny_reben, "train", bands=["B01", "B02", "VV"], normalize=False)
    s2 = safetensors.numpy.load(bytes(_get(tiny_reben, ds.records[0].patch_id)))
    x_raw = raw.read_bands(0)
    # B01 is 20x20 at 60 m: nearest upsampling repeats each pixel 6x6.
    np.testing.assert_array_equal(x_raw[0].numpy(), np.kron(s2["B01"].astype(np.float32), np.ones((6, 6))))
    np.testing.assert_array_equal(x_raw[1].numpy(), s2["B02"].astype(np.float32))
    mean, std = BAND_STATS["B02"]
    torch.testing.assert_close(ds[0]["image"][1], (x_raw[1] - mean) / std)


def test_bilinear_upsampling_and_resize(tiny_reben):
    ds = ReBENDataset(tiny_reben, "train", bands="s2_full", upsampling="bilinear", image_size=64)
    assert ds[0]["image"].shape == (12, 64, 64)


def _reference_image(root: Path, ds: ReBENDataset, i: int) -> torch.Tensor:
    """What a plain reader gives: safetensors.numpy.load, per-band interpolate, then normalise."""
    rec = ds.records[i]
    arrays = {**safetensors.numpy.load(_get(root, rec.patch_id)), **safetensors.numpy.load(_get(root, rec.s1_name))}
    channels = []
    for b in ds.bands:
        x = torch.from_numpy(arrays[b].astype(np.float32))[None, None]
        if x.shape[-1] != ds.image_size:
            mode = ds.upsampling if x.shape[-1] < ds.image_size else "area"
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            x = torch.nn.functional.interpolate(x, size=(ds.image_size,) * 2, mode=mode, **kwargs)
        mean, std = BAND_STATS[b]
        channels.append((x[0, 0] - mean) / std)
    return torch.stack(channels)


@pytest.mark.parametrize(
    ("bands", "size", "upsampling"),
    [
        ("all", 120, "nearest"),
        ("s2_full", 120, "nearest"),  # 20 px bands: factor 6
        ("s2_full", 120, "bilinear"),
        ("all", 64, "nearest"),  # non-integer upsampling and area downsampling
        ("s2_full", 64, "bilinear"),
        (["B05", "B02", "VH", "B06", "B01"], 120, "nearest"),  # bands of one size not side by side
    ],
)
def test_fast_reader_equals_the_plain_per_band_reader(tiny_reben, bands, size, upsampling):
    # The reader normalises at native resolution and resizes band groups together; the result
    # must be what per-band interpolate-then-normalise gives.
    ds = ReBENDataset(tiny_reben, "train", bands=bands, image_size=size, upsampling=upsampling)
    for i in (0, len(ds) - 1):
        torch.testing.assert_close(ds[i]["image"], _reference_image(tiny_reben, ds, i), atol=2e-5, rtol=1e-5)


def test_safetensors_views_equal_safetensors_load_without_copying(tiny_reben):
    from splml.io.reben.values import safetensors_views

    ds = ReBENDataset(tiny_reben, "train")
    value = _get(tiny_reben, ds.records[0].patch_id)
    views, loaded = safetensors_views(value), safetensors.numpy.load(value)
    assert views.keys() == loaded.keys()
    for name, arr in loaded.items():
        assert views[name].dtype == arr.dtype and views[name].shape == arr.shape
        np.testing.assert_array_equal(views[name], arr)
        assert not views[name].flags.writeable and not views[name].flags.owndata
    with pytest.raises(ValueError, match="data bytes"):
        safetensors_views(value[:-10])
    with pytest.raises(ValueError, match="header length"):
        safetensors_views(value[:20])


def test_unknown_band_set_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown band set 'rbg'"):
        resolve_band_set("rbg")
    with pytest.raises(ValueError, match="B10"):
        resolve_band_set(["B02", "B10"])


def _get(root: Path, key: str) -> bytes:
    with open_lmdb(root / "lmdb").begin() as txn:
        return bytes(txn.get(key.encode()))


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _put(root: Path, key: str, value: bytes | None) -> None:
    close_lmdb(root / "lmdb")  # the reader caches a read-only handle; LMDB allows one per process
    env = lmdb.open(str(root / "lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        if value is None:
            txn.delete(key.encode())
        else:
            txn.put(key.encode(), value)
    env.close()


def test_missing_key_names_the_patch(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s2")
    _put(root, ds.records[2].patch_id, None)
    with pytest.raises(KeyError, match=ds.records[2].patch_id):
        ds[2]


def test_corrupt_value_names_the_key(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s1")
    _put(root, ds.records[1].s1_name, b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(DataFormatError, match=ds.records[1].s1_name):
        ds[1]


def test_wrong_band_shape_or_missing_band_names_the_patch(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s2")
    pid = ds.records[0].patch_id
    arrays = safetensors.numpy.load(_get(root, pid))
    arrays["B05"] = np.zeros((120, 120), dtype=np.uint16)
    _put(root, pid, safetensors.numpy.save(arrays))
    with pytest.raises(DataFormatError, match=f"{pid}.*B05.*60x60"):
        ds[0]
    del arrays["B05"]
    _put(root, pid, safetensors.numpy.save(arrays))
    with pytest.raises(DataFormatError, match=f"{pid}.*no band 'B05'"):
        ds[0]


def test_nan_in_s1_is_an_error(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s1")
    key = ds.records[0].s1_name
    arrays = safetensors.numpy.load(_get(root, key))
    arrays["VV"][3, 4] = np.nan
    _put(root, key, safetensors.numpy.save(arrays))
    with pytest.raises(DataFormatError, match="NaN"):
        ds[0]


def test_unknown_label_name_names_the_row(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    table = pq.read_table(root / "metadata.parquet")
    labels = table.column("labels").to_pylist()
    labels[5] = ["Arable land", "Moon craters"]
    table = table.set_column(table.column_names.index("labels"), "labels", pa.array(labels, pa.list_(pa.string())))
    pq.write_table(table, root / "metadata.parquet")
    with pytest.raises(ValueError, match="row 5.*'Moon craters'"):
        read_metadata(root / "metadata.parquet")


def test_val_instead_of_validation_is_refused(tiny_reben):
    with pytest.raises(ValueError, match="'validation', not 'val'"):
        ReBENDataset(tiny_reben, "val")


def test_lmdb_reopens_after_fork(tiny_reben):
    # A DataLoader with worker processes must read correctly (the LMDB handle is per process).
    ds = ReBENDataset(tiny_reben, "test", bands="rgb")
    ds[0]  # open in the parent first
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 120, 120)
    torch.testing.assert_close(batch["image"][0], ds[0]["image"])


def _set_column(path: Path, name: str, values: list) -> None:
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(name), name, pa.array(values, table.schema.field(name).type))
    pq.write_table(table, path)


def test_duplicate_s1_names_are_named_with_their_rows_and_the_file(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    meta = root / "metadata.parquet"
    table = pq.read_table(meta).to_pydict()
    s1, pid = table["s1_name"], table["patch_id"]
    s1[7], s1[30] = s1[2], s1[11]  # two radar keys each claimed by a second patch
    _set_column(meta, "s1_name", s1)
    for read in (lambda: read_metadata(meta), lambda: ReBENDataset(root, "train")):
        with pytest.raises(DataFormatError) as info:
            read()
        message = str(info.value)
        assert str(meta) in message and "duplicate s1_name" in message
        for first, second in ((2, 7), (11, 30)):
            assert s1[first] in message
            assert f"row {first} (patch {pid[first]})" in message and f"row {second} (patch {pid[second]})" in message


def test_duplicate_patch_ids_are_all_named(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    meta = root / "metadata.parquet"
    pid = pq.read_table(meta).to_pydict()["patch_id"]
    pid[5], pid[9] = pid[1], pid[3]
    _set_column(meta, "patch_id", pid)
    with pytest.raises(DataFormatError) as info:
        read_metadata(meta)
    message = str(info.value)
    assert str(meta) in message
    assert f"duplicate patch_id {pid[1]}" in message and f"duplicate patch_id {pid[3]}" in message
    assert "row 5" in message and "row 9" in message


def _put_band(root: Path, key: str, band: str, row: int, col: int, value: float) -> None:
    arrays = safetensors.numpy.load(_get(root, key))
    arrays[band][row, col] = value
    _put(root, key, safetensors.numpy.save(arrays))


def test_absurd_radar_value_is_an_error_naming_patch_band_and_value(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="all")
    key = ds.records[4].s1_name
    _put_band(root, key, "VH", 10, 20, 1e30)
    with pytest.raises(DataFormatError) as info:
        ds[4]
    message = str(info.value)
    assert key in message and "band VH" in message and "1e+30" in message
    assert "value_range.s1" in message and "[-100.0, 60.0]" in message
    # The other patches and the same patch's S2 bands are unaffected.
    assert torch.isfinite(ds[3]["image"]).all()
    assert ReBENDataset(root, "train", bands="s2")[4]["image"].shape == (10, 120, 120)


def test_value_range_is_configurable_and_can_be_disabled(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="all")
    s1_key, s2_key = ds.records[0].s1_name, ds.records[1].patch_id
    _put_band(root, s1_key, "VV", 0, 0, -1e30)
    _put_band(root, s2_key, "B05", 1, 2, 60000)
    # S2 by default: any uint16 reflectance is accepted.
    assert ds[1]["image"].shape == (12, 120, 120)
    unchecked = ReBENDataset(root, "train", bands="all", value_range={"s1": None})
    assert unchecked.read_bands(0)[0].min() == -1e30
    strict = ReBENDataset(root, "train", bands="all", value_range={"s2": [0, 20000]})
    with pytest.raises(DataFormatError, match=rf"{s2_key}.*band B05.*60000.*value_range.s2"):
        strict[1]
    with pytest.raises(DataFormatError, match=rf"{s1_key}.*band VV.*-1e\+30"):
        strict[0]
    everything_off = ReBENDataset(root, "train", bands="all", value_range=None)
    assert everything_off.read_bands(0)[0].min() == -1e30
    with pytest.raises(ValueError, match="value_range.*'s3'"):
        ReBENDataset(root, "train", value_range={"s3": [0, 1]})
    with pytest.raises(ValueError, match=r"value_range.s1.*\[5, -5\]"):
        ReBENDataset(root, "train", value_range={"s1": [5, -5]})
    # A NaN bound would check nothing in the encoder and refuse every patch in the reader.
    with pytest.raises(ValueError, match=r"value_range.s1=\[nan, 1.0\]"):
        ReBENDataset(root, "train", value_range={"s1": [float("nan"), 1.0]})


def test_nan_is_still_an_error_with_the_value_range_disabled(tiny_reben, tmp_path):
    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s1", value_range=None)
    key = ds.records[0].s1_name
    _put_band(root, key, "VH", 3, 4, np.nan)
    with pytest.raises(DataFormatError, match=rf"{key}.*band VH contains NaN or inf"):
        ds[0]


def test_value_range_reaches_the_reader_from_the_dataset_config(tiny_reben, tmp_path):
    from hydra import compose, initialize_config_dir

    from splml.builders import build_datamodule, config_dir, register_resolvers

    root = _copy(tiny_reben, tmp_path)
    ds = ReBENDataset(root, "train", bands="s1")
    _put_band(root, ds.records[0].s1_name, "VV", 5, 5, 1e30)
    register_resolvers()
    for overrides, fails in (([], True), (["dataset.datamodule.value_range.s1=null"], False)):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                "train", overrides=["dataset=ben", f"dataset.root={root}", "dataset.datamodule.bands=s1", *overrides]
            )
        dm = build_datamodule(cfg)
        dm.setup("fit")
        train = dm.datasets["train"]
        if fails:
            with pytest.raises(DataFormatError, match=r"1e\+30"):
                train[0]
        else:
            assert train.read_bands(0).max() == 1e30
