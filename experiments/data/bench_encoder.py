"""Throughput of the reBEN GeoTIFF -> LMDB encoder (``data_prep/encode_reben.py``).

Builds a source tree in the official layout from a synthetic dataset (``export_geotiff_tree``:
15 GeoTIFFs per patch with maps), then times a fresh encode with 1 and 2 reader processes, a
resume over the complete LMDB that compares every patch with its sources, and ``--verify``.
Writes the table into this folder's README.md between the BEGIN/END encoder markers.

    python experiments/data/bench_encoder.py [--patches 500] [--workers 1 2]

The numbers are for the files in the page cache (the tree is written just before): they
measure the CPU cost of decoding TIFFs and writing the LMDB, not the disk.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BEGIN encoder -->", "<!-- END encoder -->"
README_INTRO = """# Data preparation benchmarks

Measurements of the scripts in `data_prep/` (re-run with the command in each section).

## reBEN GeoTIFF -> LMDB encoder

`python experiments/data/bench_encoder.py` encodes a synthetic source tree in the official
layout (per patch: 12 S2 band files, VV, VH and a reference map) with
`data_prep/encode_reben.py` and reports patches per second.

"""


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


Row = tuple[str, float, float, float]  # name, wall seconds, patches/s, CPU ms per patch


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the reader processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _best_of(repeats: int, patches: int, name: str, once: Callable[[], None]) -> Row:
    """Fastest wall time and lowest CPU time of ``repeats`` calls (the machine's cores are shared)."""
    wall, cpu = math.inf, math.inf
    for _ in range(repeats):
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        once()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, _cpu_seconds() - cpu0)
    return name, wall, patches / wall, 1000 * cpu / patches


def run(patches: int, workers: list[int], seed: int, repeats: int) -> list[Row]:
    """Build the source tree, then time each setting ``repeats`` times."""
    from splml.data.synthetic import LMDB_DIR, SyntheticConfig, generate_synthetic_reben
    from splml.io.reben.encoder import encode_reben
    from splml.io.reben.geotiff import export_geotiff_tree
    from splml.io.reben.verify import verify_reben

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_encoder_") as tmp:
        base = Path(tmp)
        n_val = n_test = patches // 5
        cfg = SyntheticConfig(n_train=patches - n_val - n_test, n_validation=n_val, n_test=n_test, seed=seed)
        synthetic = generate_synthetic_reben(base / "synthetic", cfg, progress=True)
        metadata = synthetic / "metadata.parquet"
        s2, s1, maps = base / "BigEarthNet-S2", base / "BigEarthNet-S1", base / "Reference_Maps"
        export_geotiff_tree(synthetic / LMDB_DIR, metadata, s2, s1, maps)
        source_mib = sum(_folder_bytes(p) for p in (s2, s1, maps)) / 2**20
        print(f"source tree: {patches} patches, {source_mib:.1f} MiB")
        out = base / "lmdb"

        def fresh(w: int) -> None:
            shutil.rmtree(out, ignore_errors=True)
            summary = encode_reben(s2, s1, metadata, out, maps_root=maps, progress=False, workers=w)
            print(summary.line())
            assert summary.encoded == patches

        def resume() -> None:
            summary = encode_reben(s2, s1, metadata, out, maps_root=maps, progress=False, compare_source="all")
            print(summary.line())
            assert summary.skipped == patches

        def verify() -> None:
            result = verify_reben(out, metadata, progress=False)
            print(result.line())
            assert result.ok

        for w in workers:
            name = f"fresh encode, {w} reader process{'es' if w > 1 else ''}"
            rows.append(_best_of(repeats, patches, name, lambda w=w: fresh(w)))
        name = "resume, all present (decode + compare every patch with its sources)"
        rows.append(_best_of(repeats, patches, name, resume))
        rows.append(_best_of(repeats, patches, "`--verify` (decode and check every key)", verify))
    return rows


def write_readme(rows: list[Row], patches: int, load: float, repeats: int) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.is_file() else README_INTRO + f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f} before the run: the cores are shared), "
        f"Python {platform.python_version()}"
    )
    lines = [
        BEGIN,
        (
            f"{patches} patches with reference maps ({15 * patches} GeoTIFFs, files in the page cache), best of "
            f"{repeats} runs, {machine}:"
        ),
        "",
        "| run | wall seconds | patches/s | CPU ms per patch |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {sec:.2f} | {rate:.0f} | {cpu:.1f} |" for name, sec, rate, cpu in rows],
        "",
        (
            "Wall-clock rates depend on how busy the shared cores were; CPU time per patch (this process "
            "plus its reader processes, lowest of the runs) does much less. At the fresh single-process "
            f"CPU cost ({rows[0][3]:.1f} ms per patch, {1000 / rows[0][3]:.0f} patches/s per free core) the full "
            f"reBEN (480,038 patches) needs about {480038 * rows[0][3] / 1000 / 3600:.1f} CPU hours. Almost all "
            "of it is GDAL opening the 15 TIFFs of a patch, so `--workers N` divides the wall time by up to N "
            "on free cores (the LMDB writer stays one process); on a busy machine extra workers bring little."
        ),
        END,
    ]
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + "\n".join(lines) + tail)
    print(f"wrote {readme}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=500, help="patches in the synthetic source tree")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="reader process counts to time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timings per setting; the fastest is reported")
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = run(args.patches, args.workers, args.seed, args.repeats)
    write_readme(rows, args.patches, load, args.repeats)


if __name__ == "__main__":
    main()
