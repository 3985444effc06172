"""The one writer of reBEN LMDBs: both producers write through it, and what it writes does not change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lmdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from splml.data.synthetic import LMDB_DIR, SyntheticConfig, generate_synthetic_reben
from splml.io.reben.encoder import encode_reben
from splml.io.reben.format import METADATA_FILE, PatchKeys
from splml.io.reben.geotiff import export_geotiff_tree
from splml.io.reben.values import check_value, encode_value, safetensors_views
from splml.io.reben.writer import ReBENWriter

#: Digests of a tiny synthetic dataset as generated before the writer was shared (the data must
#: not change: cached datasets and archived benchmark numbers depend on every byte).
GOLDEN = SyntheticConfig(n_train=4, n_validation=2, n_test=2, seed=11)
GOLDEN_LMDB_SHA256 = "f6fc46f554862a6aec723c0237e4a5ac21d1b14c17fcb8156d030e17e6886025"
GOLDEN_METADATA_SHA256 = "dc1b0738956f52c0bea20c85985951b016874a559fb00abda482eadf1778b499"


def _lmdb_digest(path: Path) -> str:
    env = lmdb.open(str(path), readonly=True, lock=False)
    digest = hashlib.sha256()
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(8, "little") + value)
    finally:
        env.close()
    return digest.hexdigest()


def test_the_synthetic_dataset_keeps_its_bytes_and_its_cache_key(tmp_path):
    root = generate_synthetic_reben(tmp_path / "golden", GOLDEN, progress=False)
    assert _lmdb_digest(root / LMDB_DIR) == GOLDEN_LMDB_SHA256
    rows = pq.read_table(root / METADATA_FILE).to_pylist()
    assert hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest() == GOLDEN_METADATA_SHA256
    # The cache folder of the default dataset keeps its name, so existing caches are found.
    assert SyntheticConfig().cache_key() == "b88f191693bf"


def test_generator_and_encoder_write_through_the_one_writer(tmp_path, monkeypatch):
    written: list[tuple[str, list[str]]] = []
    real = ReBENWriter.write

    def spy(self, entries, deletes=()):
        items = entries.items() if isinstance(entries, dict) else list(entries)
        written.append((self.path.name, sorted(k for k, _ in items)))
        return real(self, dict(items), deletes)

    monkeypatch.setattr(ReBENWriter, "write", spy)
    root = generate_synthetic_reben(tmp_path / "synthetic", SyntheticConfig(2, 1, 1, seed=4), progress=False)
    generated = {k for name, keys in written if name == LMDB_DIR for k in keys}
    assert len(generated) == 12  # 4 patches x (S2, S1, map)
    tiffs = tmp_path / "tiff"
    export_geotiff_tree(root / LMDB_DIR, root / METADATA_FILE, tiffs / "s2", tiffs / "s1", tiffs / "maps")
    written.clear()
    encode_reben(tiffs / "s2", tiffs / "s1", root / METADATA_FILE, tmp_path / "encoded", tiffs / "maps", progress=False)
    assert {k for name, keys in written if name == "encoded" for k in keys} == generated


def test_writer_refuses_a_duplicate_key_and_grows_its_map(tmp_path):
    arrays = {"Data": np.zeros((120, 120), np.uint16)}
    with ReBENWriter(tmp_path / "db", map_size=64 * 1024, durable=False, overwrite=False) as writer:
        writer.write({f"k{i:04d}": arrays for i in range(40)})  # about 1.2 MB: the map must grow
        with pytest.raises(RuntimeError, match="duplicate LMDB key 'k0001'"):
            writer.write([("k0001", arrays)])
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        assert env.stat()["entries"] == 40
        assert check_value("map", txn.get(b"k0001")) is None
    env.close()


def test_patch_entries_use_the_readers_key_names():
    keys = PatchKeys("S2A_x_1_2", "S1A_y_1_2")
    entries = keys.values({"B02": np.zeros(1)}, {"VV": np.zeros(1)}, np.zeros(1))
    assert list(entries) == ["S2A_x_1_2", "S1A_y_1_2", "S2A_x_1_2_reference_map"]
    assert [k for k, _ in keys.keys(with_maps=True)] == list(entries)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda v: v + b"\x00", "describes"),  # trailing bytes: safetensors refuses them too
        (lambda v: v[:-2], "describes"),
        (lambda v: v[:4], "shorter than the 8-byte header"),
    ],
)
def test_the_zero_copy_parser_is_as_strict_as_safetensors(damage, message):
    value = encode_value({"VV": np.zeros((4, 4), np.float32), "VH": np.ones((4, 4), np.float32)})
    assert set(safetensors_views(value)) == {"VV", "VH"}
    with pytest.raises(ValueError, match=message):
        safetensors_views(damage(value))
