"""The synthetic reBEN generator: exact file format, label/map consistency, determinism, caching.

The format checks decode every LMDB value the way the real reader does, so a format drift
between the generator and the official files shows up here and not in a long experiment.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.numpy

from splml.data.synthetic import (
    COMPLETE_MARKER,
    LMDB_DIR,
    MIN_LABEL_PIXELS,
    SyntheticConfig,
    ensure_synthetic,
    generate_synthetic_reben,
    is_complete,
    synthetic_root,
)
from splml.data.synthetic import generator as synthetic
from splml.io.reben.format import (
    BAND_STATS,
    CLASS_INDEX,
    CLASS_NAMES,
    CLC_TO_CLASS,
    METADATA_COLUMNS,
    METADATA_FILE,
    NUM_CLASSES,
    REFERENCE_MAP_SUFFIX,
    REFERENCE_MAP_TENSOR,
    S1_BANDS,
    S2_BAND_SIZES,
    SPLITS,
    UNLABELED_CLC,
)

TINY = SyntheticConfig(n_train=12, n_validation=6, n_test=6, seed=1)


def _read_lmdb(root: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(root / LMDB_DIR), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def _type_name(t: pa.DataType) -> str:
    """Arrow type as written in METADATA_COLUMNS (list child names differ between writers)."""
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _class_counts(codes: np.ndarray) -> np.ndarray:
    out = np.zeros(NUM_CLASSES, dtype=np.int64)
    values, counts = np.unique(codes, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        if v in CLC_TO_CLASS:
            out[CLC_TO_CLASS[v]] += c
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return generate_synthetic_reben(root, TINY, progress=False)


@pytest.fixture(scope="module")
def tiny_meta(tiny: Path) -> dict[str, list]:
    return pq.read_table(tiny / METADATA_FILE).to_pydict()


@pytest.fixture(scope="module")
def tiny_values(tiny: Path) -> dict[bytes, bytes]:
    return _read_lmdb(tiny)


def test_layout_and_keys(tiny: Path, tiny_meta: dict[str, list], tiny_values: dict[bytes, bytes]) -> None:
    assert (tiny / LMDB_DIR / "data.mdb").is_file()
    expected = set()
    for pid, s1 in zip(tiny_meta["patch_id"], tiny_meta["s1_name"], strict=True):
        expected |= {pid.encode(), s1.encode(), (pid + REFERENCE_MAP_SUFFIX).encode()}
    assert set(tiny_values) == expected
    assert len(set(tiny_meta["patch_id"])) == len(tiny_meta["patch_id"])
    assert len(set(tiny_meta["s1_name"])) == len(tiny_meta["s1_name"])
    assert len(set(tiny_meta["s2v1_name"])) == len(tiny_meta["s2v1_name"])
    for pid, s1, v1 in zip(tiny_meta["patch_id"], tiny_meta["s1_name"], tiny_meta["s2v1_name"], strict=True):
        assert len(pid) == 50, pid
        parts = pid.split("_")
        assert parts[0] in ("S2A", "S2B") and parts[1] == "MSIL2A" and parts[3] == "N9999"
        assert parts[4].startswith("R") and parts[5].startswith("T") and len(parts) == 8
        assert s1.startswith(("S1A_IW_GRDH_1SDV_", "S1B_IW_GRDH_1SDV_"))
        assert s1.endswith(f"_{parts[5][1:]}_{parts[6]}_{parts[7]}")
        assert v1 == "_".join(parts[:3] + parts[6:])


def test_values_decode_with_official_shapes(tiny_meta: dict[str, list], tiny_values: dict[bytes, bytes]) -> None:
    allowed_codes = set(CLC_TO_CLASS) | set(UNLABELED_CLC)
    for pid, s1_name in zip(tiny_meta["patch_id"], tiny_meta["s1_name"], strict=True):
        s2 = safetensors.numpy.load(tiny_values[pid.encode()])
        assert set(s2) == set(S2_BAND_SIZES)
        for band, size in S2_BAND_SIZES.items():
            assert s2[band].dtype == np.uint16 and s2[band].shape == (size, size), band
        s1 = safetensors.numpy.load(tiny_values[s1_name.encode()])
        assert set(s1) == set(S1_BANDS)
        for band in S1_BANDS:
            arr = s1[band]
            assert arr.dtype == np.float32 and arr.shape == (120, 120)
            assert np.isfinite(arr).all() and arr.min() >= -40.0 and arr.max() <= 15.0
        assert s1["VV"].mean() > s1["VH"].mean()  # co-pol is brighter than cross-pol
        ref = safetensors.numpy.load(tiny_values[(pid + REFERENCE_MAP_SUFFIX).encode()])
        assert set(ref) == {REFERENCE_MAP_TENSOR}
        codes = ref[REFERENCE_MAP_TENSOR]
        assert codes.dtype == np.uint16 and codes.shape == (120, 120)
        assert set(np.unique(codes).tolist()) <= allowed_codes


def test_metadata_schema_and_splits(tiny: Path, tiny_meta: dict[str, list]) -> None:
    schema = pq.read_schema(tiny / METADATA_FILE)
    assert {f.name: _type_name(f.type) for f in schema} == METADATA_COLUMNS
    assert schema.names == list(METADATA_COLUMNS)
    counts = {s: tiny_meta["split"].count(s) for s in set(tiny_meta["split"])}
    assert counts == dict(zip(SPLITS, (TINY.n_train, TINY.n_validation, TINY.n_test), strict=True))
    for labels in tiny_meta["labels"]:
        assert 1 <= len(labels) <= 11
        assert labels == sorted(labels) and len(set(labels)) == len(labels)
        assert set(labels) <= set(CLASS_NAMES)
    assert len(set(tiny_meta["country"])) >= 2
    assert all(isinstance(x, bool) for x in tiny_meta["contains_seasonal_snow"])


def test_labels_equal_classes_with_enough_pixels(tiny_meta: dict[str, list], tiny_values: dict[bytes, bytes]) -> None:
    for pid, labels in zip(tiny_meta["patch_id"], tiny_meta["labels"], strict=True):
        codes = safetensors.numpy.load(tiny_values[(pid + REFERENCE_MAP_SUFFIX).encode()])[REFERENCE_MAP_TENSOR]
        counts = _class_counts(codes)
        from_map = {CLASS_NAMES[c] for c in np.flatnonzero(counts >= MIN_LABEL_PIXELS)}
        assert set(labels) == from_map, pid
        # no class is present below the threshold: small regions were merged, not dropped silently
        assert not ((counts > 0) & (counts < MIN_LABEL_PIXELS)).any(), pid


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, tiny: Path, tiny_values: dict[bytes, bytes]) -> None:
    again = generate_synthetic_reben(tmp_path / "again", TINY, progress=False)
    assert _read_lmdb(again) == tiny_values
    assert pq.read_table(again / METADATA_FILE).equals(pq.read_table(tiny / METADATA_FILE))

    other = generate_synthetic_reben(
        tmp_path / "other", SyntheticConfig(n_train=12, n_validation=6, n_test=6, seed=2), progress=False
    )
    other_values = _read_lmdb(other)
    assert set(other_values) != set(tiny_values)
    assert sorted(other_values.values()) != sorted(tiny_values.values())


def test_patch_does_not_depend_on_other_split_sizes(tmp_path: Path, tiny: Path) -> None:
    """Patch j of a split comes from its own seed: growing the train split leaves test alone."""
    bigger = SyntheticConfig(n_train=3, n_validation=1, n_test=TINY.n_test, seed=TINY.seed)
    root = generate_synthetic_reben(tmp_path / "bigger", bigger, progress=False)
    a = pq.read_table(tiny / METADATA_FILE).to_pylist()
    b = pq.read_table(root / METADATA_FILE).to_pylist()
    test_a = [r for r in a if r["split"] == "test"]
    test_b = [r for r in b if r["split"] == "test"]
    assert test_a == test_b
    va, vb = _read_lmdb(tiny), _read_lmdb(root)
    for r in test_b:
        assert va[r["patch_id"].encode()] == vb[r["patch_id"].encode()]


def test_without_reference_maps(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_train=3, n_validation=1, n_test=1, seed=5, with_reference_maps=False)
    root = generate_synthetic_reben(tmp_path / "nomaps", cfg, progress=False)
    keys = _read_lmdb(root)
    meta = pq.read_table(root / METADATA_FILE).to_pydict()
    assert len(keys) == 2 * len(meta["patch_id"])
    assert not any(k.endswith(REFERENCE_MAP_SUFFIX.encode()) for k in keys)


def test_refuses_to_overwrite(tiny: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_synthetic_reben(tiny, TINY, progress=False)


def test_config_validation_and_cache_key() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(n_train=-1)
    with pytest.raises(ValueError):
        SyntheticConfig(n_train=0, n_validation=0, n_test=0)
    assert SyntheticConfig().cache_key() == SyntheticConfig().cache_key()
    assert SyntheticConfig(seed=1).cache_key() != SyntheticConfig(seed=2).cache_key()
    assert SyntheticConfig(with_reference_maps=False).cache_key() != SyntheticConfig().cache_key()


class _CountingGenerator:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.real = synthetic.generate_synthetic_reben

    def __call__(self, root: Path, cfg: SyntheticConfig, progress: bool = True, first: dict | None = None) -> Path:
        with self.lock:
            self.calls += 1
        return self.real(root, cfg, progress=False, first=first)


def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingGenerator()
    monkeypatch.setattr(synthetic, "generate_synthetic_reben", counter)
    cfg = SyntheticConfig(n_train=3, n_validation=1, n_test=1, seed=7)
    root = ensure_synthetic(tmp_path, cfg)
    assert root == synthetic_root(tmp_path, cfg) and is_complete(root)
    assert counter.calls == 1
    stamp = (root / METADATA_FILE).stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, cfg) == root
    assert counter.calls == 1 and (root / METADATA_FILE).stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(f"{root.name}.tmp-*"))
    # another config gets its own folder
    other = ensure_synthetic(tmp_path, SyntheticConfig(n_train=2, n_validation=1, n_test=1, seed=7))
    assert other != root and counter.calls == 2


def test_ensure_synthetic_concurrent_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingGenerator()
    monkeypatch.setattr(synthetic, "generate_synthetic_reben", counter)
    cfg = SyntheticConfig(n_train=3, n_validation=1, n_test=1, seed=8)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_synthetic(tmp_path, cfg))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.calls == 1
    assert len(results) == 3 and len(set(results)) == 1 and is_complete(results[0])


def test_interrupted_generation_is_not_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SyntheticConfig(n_train=3, n_validation=1, n_test=1, seed=9)
    final = synthetic_root(tmp_path, cfg)
    # a crashed run left its temp folder, and a folder under the final name without the marker
    leftover = tmp_path / f"{final.name}.tmp-999999-deadbeef"
    (leftover / LMDB_DIR).mkdir(parents=True)
    (leftover / LMDB_DIR / "data.mdb").write_bytes(b"partial")
    (final / LMDB_DIR).mkdir(parents=True)
    (final / METADATA_FILE).write_bytes(b"partial")
    assert not is_complete(final)

    counter = _CountingGenerator()
    monkeypatch.setattr(synthetic, "generate_synthetic_reben", counter)
    root = ensure_synthetic(tmp_path, cfg)
    assert counter.calls == 1 and root == final and is_complete(root)
    assert (root / COMPLETE_MARKER).is_file()
    assert not leftover.exists()
    assert pq.read_table(root / METADATA_FILE).num_rows == 5


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(root: Path, cfg: SyntheticConfig, progress: bool = True, first: dict | None = None) -> Path:
        (Path(root) / LMDB_DIR).mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_synthetic_reben", crash)
    cfg = SyntheticConfig(n_train=2, n_validation=1, n_test=1, seed=10)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, cfg)
    assert not synthetic_root(tmp_path, cfg).exists()
    assert not [p for p in os.listdir(tmp_path) if not p.endswith(".lock")]


def test_label_statistics_and_band_ranges(tmp_path: Path) -> None:
    """A few hundred patches look like reBEN: ~3 labels, imbalanced, every class present."""
    cfg = SyntheticConfig(n_train=240, n_validation=30, n_test=30, seed=0, with_reference_maps=False)
    root = generate_synthetic_reben(tmp_path / "stats", cfg, progress=False)
    meta = pq.read_table(root / METADATA_FILE).to_pydict()
    n_labels = np.array([len(x) for x in meta["labels"]])
    assert 2.0 <= n_labels.mean() <= 4.0
    freq = np.zeros(NUM_CLASSES)
    for labels in meta["labels"]:
        freq[[CLASS_INDEX[name] for name in labels]] += 1
    assert (freq > 0).all(), dict(zip(CLASS_NAMES, freq.tolist(), strict=True))
    assert freq.max() / freq.min() > 5
    flags = np.array(meta["contains_seasonal_snow"]) | np.array(meta["contains_cloud_or_shadow"])
    assert 0 < flags.mean() < 0.2

    values = _read_lmdb(root)
    sums: dict[str, float] = {}
    for pid, s1_name in zip(meta["patch_id"][:100], meta["s1_name"][:100], strict=True):
        arrays = safetensors.numpy.load(values[pid.encode()]) | safetensors.numpy.load(values[s1_name.encode()])
        for band, arr in arrays.items():
            sums[band] = sums.get(band, 0.0) + float(arr.astype(np.float64).mean()) / 100
    for band, (mean, std) in BAND_STATS.items():
        assert abs(sums[band] - mean) < 0.5 * std, (band, sums[band], mean)


def test_the_first_patches_of_a_dataset_are_its_own_patches_byte_for_byte(tmp_path: Path, tiny: Path) -> None:
    """``first`` (what a run with max_samples uses) writes those patches only, identical to the whole dataset's."""
    first = {"train": 2, "validation": 1, "test": 3}
    part = generate_synthetic_reben(tmp_path / "part", TINY, progress=False, first=first)
    whole_rows = pq.read_table(tiny / METADATA_FILE).to_pylist()
    expected = [row for split in first for row in [r for r in whole_rows if r["split"] == split][: first[split]]]
    assert pq.read_table(part / METADATA_FILE).to_pylist() == expected
    whole, values = _read_lmdb(tiny), _read_lmdb(part)
    assert len(values) == 3 * sum(first.values())  # S2, S1 and the reference map of each
    assert values and all(whole[key] == value for key, value in values.items())


def test_ensure_synthetic_keeps_a_part_beside_the_whole_and_the_whole_under_its_own_name(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_train=3, n_validation=1, n_test=1, seed=9)
    part = ensure_synthetic(tmp_path, cfg, first={"train": 2, "validation": None, "test": 5})
    assert part.name == f"reben-synthetic-{cfg.cache_key()}-first-2-1-1" and is_complete(part)
    assert pq.read_table(part / METADATA_FILE).num_rows == 4
    # Caps that keep every patch are the whole dataset, under the name it always had.
    assert ensure_synthetic(tmp_path, cfg, first={"train": 3, "validation": 10, "test": None}) == synthetic_root(
        tmp_path, cfg
    )
