"""The GeoTIFF -> LMDB encoder: byte-exact round trip through the real reader, resume, verify, bad sources.

The source tree is built from a 4-patch synthetic dataset exported to GeoTIFFs in the official
folder layout, so encoding it must give back exactly the synthetic LMDB's bytes.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import safetensors.numpy
from affine import Affine

from splml.data.datasets.reben import ReBENDataset
from splml.data.synthetic import LMDB_DIR, SyntheticConfig, generate_synthetic_reben
from splml.io.errors import DataFormatError
from splml.io.reben.encoder import NOT_IN_METADATA_FILE, SKIPPED_FILE, encode_reben
from splml.io.reben.format import METADATA_FILE, REFERENCE_MAP_SUFFIX, S1_BANDS, S2_BAND_SIZES
from splml.io.reben.geotiff import EncodeError, export_geotiff_tree
from splml.io.reben.lmdb import close_lmdb
from splml.io.reben.metadata import load_patch_list
from splml.io.reben.verify import verify_reben

SCRIPT = Path(__file__).resolve().parents[3] / "data_prep" / "encode_reben.py"


@dataclass(frozen=True)
class Tree:
    """A GeoTIFF source tree plus the synthetic dataset it was exported from."""

    synthetic: Path
    s2: Path
    s1: Path
    maps: Path

    @property
    def metadata(self) -> Path:
        return self.synthetic / METADATA_FILE

    def s2_band(self, pid: str, band: str) -> Path:
        return next(self.s2.glob(f"*/{pid}/{pid}_{band}.tif"))

    def s1_band(self, s1_name: str, band: str) -> Path:
        return next(self.s1.glob(f"*/{s1_name}/{s1_name}_{band}.tif"))

    def encode(self, out: Path, **kwargs) -> object:
        kwargs.setdefault("progress", False)
        return encode_reben(self.s2, self.s1, self.metadata, out, maps_root=self.maps, **kwargs)


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("geotiff")
    synthetic = generate_synthetic_reben(
        base / "synthetic", SyntheticConfig(n_train=3, n_validation=1, n_test=0, seed=5), progress=False
    )
    tree = Tree(synthetic, base / "BigEarthNet-S2", base / "BigEarthNet-S1", base / "Reference_Maps")
    export_geotiff_tree(synthetic / LMDB_DIR, tree.metadata, tree.s2, tree.s1, tree.maps)
    return tree


@pytest.fixture
def tree(source_tree: Tree, tmp_path: Path) -> Tree:
    """A private copy of the source tree that a test may damage."""
    copy = Tree(
        source_tree.synthetic,
        tmp_path / "BigEarthNet-S2",
        tmp_path / "BigEarthNet-S1",
        tmp_path / "Reference_Maps",
    )
    for src, dst in ((source_tree.s2, copy.s2), (source_tree.s1, copy.s1), (source_tree.maps, copy.maps)):
        shutil.copytree(src, dst)
    return copy


def _patches(tree: Tree):
    return load_patch_list(tree.metadata)


def _lmdb_items(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor())
    finally:
        env.close()


def _put(path: Path, key: str, value: bytes) -> None:
    env = lmdb.open(str(path))
    try:
        with env.begin(write=True) as txn:
            txn.put(key.encode(), value)
    finally:
        env.close()


def _script():
    spec = importlib.util.spec_from_file_location("encode_reben_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_trip_is_byte_exact_through_the_real_reader(source_tree: Tree, tmp_path: Path):
    out = tmp_path / "lmdb"
    summary = source_tree.encode(out)
    assert (summary.encoded, summary.skipped, summary.bad) == (4, 0, [])
    # Same keys, same bytes as the synthetic LMDB the TIFFs came from.
    assert _lmdb_items(out) == _lmdb_items(source_tree.synthetic / LMDB_DIR)

    for split in ("train", "validation"):
        ds = ReBENDataset(source_tree.synthetic, split, bands="all_full", lmdb_path=out)
        for i, rec in enumerate(ds.records):
            s2 = ds.reader.bands(rec.patch_id, ds.reader.read(rec.patch_id), list(S2_BAND_SIZES), np.uint16)
            for band, arr in s2.items():
                with rasterio.open(source_tree.s2_band(rec.patch_id, band)) as src:
                    np.testing.assert_array_equal(arr, src.read(1), err_msg=f"{rec.patch_id} {band}")
            s1 = ds.reader.bands(rec.s1_name, ds.reader.read(rec.s1_name), list(S1_BANDS), np.float32)
            for band, arr in s1.items():
                with rasterio.open(source_tree.s1_band(rec.s1_name, band)) as src:
                    assert arr.tobytes() == src.read(1).tobytes()
            map_file = next(source_tree.maps.glob(f"*/{rec.patch_id}/{rec.patch_id}{REFERENCE_MAP_SUFFIX}.tif"))
            with rasterio.open(map_file) as src:
                np.testing.assert_array_equal(ds.read_reference_map(i), src.read(1))
            assert ds[i]["image"].shape == (14, 120, 120)
    close_lmdb(out)


def test_resume_skips_present_keys_and_repairs_a_corrupt_one(tree: Tree, tmp_path: Path):
    out = tmp_path / "lmdb"
    first = tree.encode(out, batch_size=2)
    original = _lmdb_items(out)
    again = tree.encode(out, compare_source="all")
    assert (again.encoded, again.skipped, again.compared, again.repaired) == (0, 4, 4, 0)
    assert _lmdb_items(out) == original

    victim = _patches(tree)[1]
    _put(out, victim.s1_name, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    repaired = tree.encode(out, compare_source=0)
    assert (repaired.encoded, repaired.repaired, repaired.skipped) == (1, 1, 3)
    assert _lmdb_items(out) == original
    assert first.total == 4


def test_resume_compares_sample_with_sources(tree: Tree, tmp_path: Path):
    # A well-formed value with different pixels passes the structural check; only the
    # comparison with the source rasters catches it.
    out = tmp_path / "lmdb"
    tree.encode(out)
    original = _lmdb_items(out)
    victim = _patches(tree)[2]
    arrays = safetensors.numpy.load(original[victim.patch_id.encode()])
    arrays["B04"] = arrays["B04"] + np.uint16(1)
    _put(out, victim.patch_id, safetensors.numpy.save(arrays))
    assert tree.encode(out, compare_source=0).repaired == 0  # not sampled: kept
    fixed = tree.encode(out, compare_source="all")
    assert (fixed.repaired, fixed.skipped) == (1, 3)
    assert _lmdb_items(out) == original


def test_missing_keys_are_encoded_and_map_grows(tree: Tree, tmp_path: Path):
    out = tmp_path / "lmdb"
    summary = tree.encode(out, map_size=256 * 1024, batch_size=4)  # far too small: must double until it fits
    assert summary.encoded == 4
    assert _lmdb_items(out) == _lmdb_items(tree.synthetic / LMDB_DIR)


def test_verify_names_corrupt_and_missing_keys(tree: Tree, tmp_path: Path, capsys):
    out = tmp_path / "lmdb"
    tree.encode(out)
    ok = verify_reben(out, tree.metadata, progress=False)
    assert ok.ok and ok.maps_checked and ok.keys_checked == 12
    p0, p1, p2 = _patches(tree)[:3]
    _put(out, p0.patch_id, b"not safetensors at all")
    bad_s1 = {"VV": np.full((120, 120), np.nan, np.float32), "VH": np.zeros((120, 120), np.float32)}
    _put(out, p1.s1_name, safetensors.numpy.save(bad_s1))
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.delete((p2.patch_id + REFERENCE_MAP_SUFFIX).encode())
    env.close()

    result = verify_reben(out, tree.metadata, progress=False)
    bad = dict(result.problems)
    assert set(bad) == {p0.patch_id, p1.s1_name, p2.patch_id + REFERENCE_MAP_SUFFIX}
    assert "safetensors" in bad[p0.patch_id]
    assert "NaN" in bad[p1.s1_name]
    assert "missing key" in bad[p2.patch_id + REFERENCE_MAP_SUFFIX]

    code = _script().main(["--verify", "--quiet", "--metadata", str(tree.metadata), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert p0.patch_id in err and p1.s1_name in err


def test_missing_band_file_is_an_error_naming_it(tree: Tree, tmp_path: Path):
    pid = _patches(tree)[0].patch_id
    missing = tree.s2_band(pid, "B8A")
    missing.unlink()
    with pytest.raises(EncodeError, match=rf"{pid}.*missing file .*{missing.name}"):
        tree.encode(tmp_path / "lmdb")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "unreadable TIFF"),
        ("shape", "expected uint16 60x60, got uint16 120x120"),
        ("nan", "NaN or inf"),
        ("no_folder", "no Sentinel-1 folder"),
        ("bad_code", "not CORINE level-3 codes"),
    ],
)
def test_bad_sources_are_errors_naming_the_patch(tree: Tree, tmp_path: Path, damage: str, message: str):
    p = _patches(tree)[3]
    if damage == "truncate":
        f = tree.s2_band(p.patch_id, "B02")
        f.write_bytes(f.read_bytes()[:2000])
    elif damage == "shape":
        _write_tif(tree.s2_band(p.patch_id, "B05"), np.zeros((120, 120), np.uint16))
    elif damage == "nan":
        arr = np.zeros((120, 120), np.float32)
        arr[3, 4] = np.nan
        _write_tif(tree.s1_band(p.s1_name, "VH"), arr)
    elif damage == "no_folder":
        shutil.rmtree(tree.s1_band(p.s1_name, "VV").parent)
    elif damage == "bad_code":
        _write_tif(next(tree.maps.glob(f"*/{p.patch_id}/*.tif")), np.full((120, 120), 7, np.uint16))
    with pytest.raises(EncodeError, match=message) as info:
        tree.encode(tmp_path / "lmdb")
    assert p.patch_id in str(info.value)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    profile = {
        "driver": "GTiff", "width": arr.shape[1], "height": arr.shape[0], "count": 1, "dtype": arr.dtype.name,
        "crs": "EPSG:32633", "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5300000.0),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)


def test_skip_bad_writes_csv_and_encodes_the_rest(source_tree: Tree, tree: Tree, tmp_path: Path):
    p = _patches(tree)
    b01 = tree.s2_band(p[0].patch_id, "B01")
    b01.unlink()
    vv = tree.s1_band(p[2].s1_name, "VV")
    vv.write_bytes(vv.read_bytes()[:500])
    out = tmp_path / "lmdb"
    summary = tree.encode(out, skip_bad=True, workers=2, batch_size=2)
    assert summary.encoded == 2 and [pid for pid, _ in summary.bad] == [p[0].patch_id, p[2].patch_id]
    with (out / SKIPPED_FILE).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patch_id"] for r in rows] == [p[0].patch_id, p[2].patch_id]
    assert "B01.tif" in rows[0]["reason"] and "unreadable TIFF" in rows[1]["reason"]
    keys = _lmdb_items(out)
    assert p[0].patch_id.encode() not in keys and p[2].s1_name.encode() not in keys
    assert p[1].patch_id.encode() in keys
    # Fixing the sources and re-running fills the gaps.
    shutil.copy(source_tree.s2 / b01.relative_to(tree.s2), b01)
    shutil.copy(source_tree.s1 / vv.relative_to(tree.s1), vv)
    resumed = tree.encode(out, skip_bad=True)
    assert (resumed.encoded, resumed.skipped, resumed.bad) == (2, 2, [])
    assert _lmdb_items(out) == _lmdb_items(tree.synthetic / LMDB_DIR)
    assert (out / SKIPPED_FILE).read_text().strip() == "patch_id,reason"


def test_folder_without_metadata_row_is_reported_not_encoded(tree: Tree, tmp_path: Path):
    stray = (
        tree.s2 / "S2B_MSIL2A_20170101T000000_N9999_R001_T33UUP" / "S2B_MSIL2A_20170101T000000_N9999_R001_T33UUP_10_10"
    )
    stray.mkdir(parents=True)
    out = tmp_path / "lmdb"
    summary = tree.encode(out)
    assert summary.encoded == 4
    assert summary.not_in_metadata == [("S2", str(stray))]
    assert str(stray) in (out / NOT_IN_METADATA_FILE).read_text()
    assert not any(k.startswith(stray.name.encode()) for k in _lmdb_items(out))


def test_duplicate_patch_ids_in_metadata_are_an_error(tree: Tree, tmp_path: Path):
    table = pq.read_table(tree.metadata)
    extra = tmp_path / "extra.parquet"
    pq.write_table(table.slice(0, 1), extra)
    # The reader's metadata check refuses it (one home for the rule), naming both files.
    with pytest.raises(DataFormatError, match=f"duplicate patch_id {table['patch_id'][0].as_py()}.*{extra}"):
        encode_reben(tree.s2, tree.s1, [tree.metadata, extra], tmp_path / "lmdb", progress=False)


def test_patch_without_folder_is_an_error(tree: Tree, tmp_path: Path):
    pid = _patches(tree)[1].patch_id
    shutil.rmtree(tree.s2_band(pid, "B02").parent)
    with pytest.raises(EncodeError, match=f"no Sentinel-2 folder {pid}"):
        tree.encode(tmp_path / "lmdb")


def test_script_help_and_encode(tree: Tree, tmp_path: Path, capsys):
    script = _script()
    with pytest.raises(SystemExit) as info:
        script.main(["--help"])
    assert info.value.code == 0
    assert "--skip-bad" in capsys.readouterr().out
    out = tmp_path / "lmdb"
    args = ["--s2", str(tree.s2), "--s1", str(tree.s1), "--metadata", str(tree.metadata), "--out", str(out)]
    assert script.main([*args, "--quiet"]) == 0
    assert "encoded 4" in capsys.readouterr().out
    # Without --maps no map keys are written, and verify accepts that.
    assert not any(k.endswith(REFERENCE_MAP_SUFFIX.encode()) for k in _lmdb_items(out))
    assert script.main(["--verify", "--quiet", "--metadata", str(tree.metadata), "--out", str(out)]) == 0
    # ... unless maps are required.
    assert script.main(["--verify", "--quiet", "--metadata", str(tree.metadata), "--out", str(out), "--maps", "x"]) == 1


def test_corrupt_patch_with_bad_source_is_deleted_under_skip_bad(tree: Tree, tmp_path: Path):
    out = tmp_path / "lmdb"
    tree.encode(out)
    victim = _patches(tree)[0]
    _put(out, victim.patch_id, b"junk")
    tree.s2_band(victim.patch_id, "B03").unlink()
    with pytest.raises(EncodeError, match="B03.tif"):
        tree.encode(out)
    summary = tree.encode(out, skip_bad=True)
    assert (summary.skipped, summary.repaired, len(summary.bad)) == (3, 0, 1)
    assert "deleted" in summary.bad[0][1]
    keys = _lmdb_items(out)
    assert victim.patch_id.encode() not in keys and victim.s1_name.encode() not in keys
    assert dict(verify_reben(out, tree.metadata, progress=False).problems)[victim.patch_id].endswith("missing key")


def test_verify_flags_absurd_values_and_the_range_is_configurable(tree: Tree, tmp_path: Path, capsys):
    out = tmp_path / "lmdb"
    tree.encode(out)
    p0, p1 = _patches(tree)[:2]
    with lmdb.open(str(out), readonly=True, lock=False) as env, env.begin() as txn:
        s1 = safetensors.numpy.load(txn.get(p0.s1_name.encode()))
        s2 = safetensors.numpy.load(txn.get(p1.patch_id.encode()))
    s1["VH"][7, 8] = 1e30
    s2["B11"][0, 0] = 50000
    _put(out, p0.s1_name, safetensors.numpy.save(s1))
    _put(out, p1.patch_id, safetensors.numpy.save(s2))

    bad = dict(verify_reben(out, tree.metadata, progress=False).problems)
    assert set(bad) == {p0.s1_name}  # the S2 default accepts every uint16 value
    assert "tensor VH has value 1e+30 outside value_range.s1 [-100.0, 60.0] dB" in bad[p0.s1_name]
    strict = dict(verify_reben(out, tree.metadata, progress=False, value_range={"s2": [0, 20000]}).problems)
    assert set(strict) == {p0.s1_name, p1.patch_id} and "tensor B11 has value 50000" in strict[p1.patch_id]
    assert verify_reben(out, tree.metadata, progress=False, value_range={"s1": None}).ok

    script = _script()
    args = ["--verify", "--quiet", "--metadata", str(tree.metadata), "--out", str(out)]
    assert script.main(args) == 1
    assert "1e+30" in capsys.readouterr().err
    assert script.main([*args, "--value-range", "s1=none"]) == 0
    assert script.main([*args, "--value-range", "s1=-100,60", "--value-range", "s2=0,20000"]) == 1
    assert p1.patch_id in capsys.readouterr().err


def test_absurd_source_value_is_a_bad_patch(tree: Tree, tmp_path: Path):
    p = _patches(tree)[1]
    arr = np.zeros((120, 120), np.float32)
    arr[1, 2] = -3e38
    _write_tif(tree.s1_band(p.s1_name, "VV"), arr)
    with pytest.raises(EncodeError, match=rf"{p.patch_id}.*_VV.tif: has value -3e\+38 outside value_range.s1"):
        tree.encode(tmp_path / "lmdb")
    summary = tree.encode(tmp_path / "lmdb", value_range={"s1": None})
    assert summary.encoded == 4 and summary.bad == []
