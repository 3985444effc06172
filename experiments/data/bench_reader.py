"""Throughput of the reBEN reader against a plain per-band baseline (patches per second, one process).

Builds an LMDB of ``--patches`` patches in the reBEN format by replicating the embedded synthetic
dataset's values under new keys (the content is real-format bytes: 12 uint16 S2 arrays at 120,
60 and 20 px, float32 VV/VH, plus the metadata.parquet rows), then times, in one process (what
one DataLoader worker does), two ways of turning a patch into a normalised C x S x S tensor:

* ``splml``: ``ReBENDataset.read_bands(i, normalize=True)`` (views of the LMDB page, normalised
  at native resolution, integer nearest upsampling by ``repeat``);
* ``baseline``: what a plain reader does: ``safetensors.numpy.load`` of each value, then per band
  a float32 tensor, ``torch.nn.functional.interpolate`` to S x S, ``torch.stack`` and
  ``(x - mean) / std``.

Both read the same shuffled indices; rounds alternate between the readers so that the load of
a shared machine hits both alike, and CPU time (``time.process_time``) is reported beside wall
time. The LMDB is read once before timing, so its pages are in the page cache: this measures
decode + resize + normalise, not the disk. Writes the table into this folder's README.md.

    python experiments/data/bench_reader.py [--patches 20000] [--image-size 120] [--rounds 3] [--per-round 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent


def build_lmdb(root: Path, patches: int) -> Path:
    """An LMDB + metadata.parquet of ``patches`` train patches, replicated from the synthetic dataset."""
    import pyarrow.parquet as pq

    from splml.data.synthetic import SyntheticConfig, ensure_synthetic
    from splml.io.reben.format import METADATA_FILE
    from splml.io.reben.lmdb import open_reben_lmdb
    from splml.io.reben.metadata import write_metadata
    from splml.io.reben.values import safetensors_views
    from splml.io.reben.writer import ReBENWriter

    source = ensure_synthetic(root / "source", SyntheticConfig())
    meta = pq.read_table(source / METADATA_FILE).to_pylist()
    src_env = open_reben_lmdb(source / "lmdb", lock=False)
    out = root / "reben"
    rows = []
    with src_env.begin() as src, ReBENWriter(out / "lmdb", map_size=400_000 * patches + (1 << 30)) as writer:
        entries = {}
        for n in range(patches):
            row = dict(meta[n % len(meta)])
            copy = n // len(meta)
            # New, unique keys of the official length: the copy number replaces the tile's
            # last two characters (the content is what the reader decodes; keys only index it).
            for field in ("patch_id", "s1_name"):
                key = row[field]
                row[field] = f"{key[:-8]}{copy:02d}{key[-6:]}" if copy else key
                entries[row[field]] = safetensors_views(src.get(key.encode()))
            row["split"] = "train"
            rows.append(row)
            if len(entries) >= 2048:
                writer.write(entries)
                entries = {}
        writer.write(entries)
    src_env.close()
    write_metadata(out / METADATA_FILE, rows)
    return out


class BaselineReader:
    """One patch per call: decode each value with safetensors, then per band interpolate with torch."""

    def __init__(self, dataset) -> None:  # the splml dataset only supplies paths, keys and statistics
        import torch

        from splml.io.reben.format import BAND_STATS

        self.records, self.bands, self.size, self.mode = (
            dataset.records,
            dataset.bands,
            dataset.image_size,
            dataset.upsampling,
        )
        self.lmdb_path = dataset.lmdb_path
        self.mean = torch.tensor([BAND_STATS[b][0] for b in self.bands]).view(-1, 1, 1)
        self.std = torch.tensor([BAND_STATS[b][1] for b in self.bands]).view(-1, 1, 1)
        self.env = None

    def __call__(self, i: int):
        import numpy as np
        import safetensors.numpy
        import torch
        import torch.nn.functional as F

        if self.env is None:
            # LMDB allows one environment per file and process: share the reader's (same flags).
            from splml.io.reben.lmdb import open_lmdb

            self.env = open_lmdb(self.lmdb_path)
        rec = self.records[i]
        with self.env.begin() as txn:
            arrays = {**safetensors.numpy.load(bytes(txn.get(rec.patch_id.encode()))),
                      **safetensors.numpy.load(bytes(txn.get(rec.s1_name.encode())))}  # fmt: skip
        channels = []
        for b in self.bands:
            x = torch.from_numpy(arrays[b].astype(np.float32))
            if x.shape[-1] != self.size:
                mode = self.mode if x.shape[-1] < self.size else "area"
                kwargs = {"align_corners": False} if mode == "bilinear" else {}
                x = F.interpolate(x[None, None], size=(self.size, self.size), mode=mode, **kwargs)[0, 0]
            channels.append(x)
        return (torch.stack(channels) - self.mean) / self.std


def time_reader(read, indices: list[int]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in indices:
        read(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=120)
    parser.add_argument("--upsampling", default="nearest", choices=["nearest", "bilinear"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=4000, help="patches read per reader and round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the LMDB is built (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated LMDB")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch

    from splml.data.datasets.reben import ReBENDataset

    torch.set_num_threads(args.threads)
    started = time.time()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="splml-bench-reader-"))
    t0 = time.perf_counter()
    root = workdir / "reben"
    root = root if (root / "metadata.parquet").is_file() else build_lmdb(workdir, args.patches)
    build_s = time.perf_counter() - t0
    lmdb_bytes = (root / "lmdb" / "data.mdb").stat().st_size
    ds = ReBENDataset(root, "train", image_size=args.image_size, upsampling=args.upsampling)
    baseline = BaselineReader(ds)
    n = len(ds)

    # Same output, so the two readers are compared on equal work.
    for i in (0, n // 2, n - 1):
        ours, theirs = ds.read_bands(i, normalize=True), baseline(i)
        diff = float((ours - theirs).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"readers disagree on patch {i}: max abs diff {diff}")
    # Warm the page cache with one pass over every key.
    t0 = time.perf_counter()
    for i in range(n):
        ds.read_bands(i)
    warm_s = time.perf_counter() - t0

    rng = random.Random(0)
    readers = {"splml": lambda i: ds.read_bands(i, normalize=True), "baseline": baseline}
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in readers}
    for r in range(args.rounds):
        indices = rng.sample(range(n), min(args.per_round, n))
        order = list(readers) if r % 2 == 0 else list(reversed(readers))
        for name in order:
            samples[name].append(time_reader(readers[name], indices))
            print(
                f"round {r + 1}/{args.rounds} {name}: {len(indices) / samples[name][-1][1]:.0f} patches/s CPU",
                flush=True,
            )

    per = min(args.per_round, n)
    rows = {}
    for name, vals in samples.items():
        wall = statistics.median(v[0] for v in vals) / per
        cpu = statistics.median(v[1] for v in vals) / per
        rows[name] = {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "wall_rate": 1 / wall, "cpu_rate": 1 / cpu}
    ratio_cpu = rows["baseline"]["cpu_ms"] / rows["splml"]["cpu_ms"]
    ratio_wall = rows["baseline"]["wall_ms"] / rows["splml"]["wall_ms"]
    per_round_ratios = [b[1] / s[1] for s, b in zip(samples["splml"], samples["baseline"], strict=True)]
    load = os.getloadavg()[0]
    channels = len(ds.bands)
    text = [
        (
            f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}), "
            f"torch {torch.__version__}, {args.threads} torch thread(s), load average {load:.1f} at the end "
            "(the cores are shared with other jobs: CPU time is the verdict, wall time is shown beside it)."
        ),
        "",
        (
            f"Command: `python experiments/data/bench_reader.py --patches {args.patches} --image-size {args.image_size} "
            f"--upsampling {args.upsampling} --rounds {args.rounds} --per-round {args.per_round}` "
            f"(wall time {(time.time() - started) / 60:.1f} min; LMDB build {build_s:.0f} s, one warm-up pass over all "
            f"{n:,} patches {warm_s:.0f} s)."
        ),
        "",
        (
            f"LMDB: {n:,} patches, {lmdb_bytes / 1e9:.2f} GB (`data.mdb`), {channels} bands (`all`) to "
            f"{args.image_size} x {args.image_size}, upsampling `{args.upsampling}`, normalised; "
            f"{args.rounds} rounds x {per:,} random patches per reader, medians."
        ),
        "",
        "| reader | CPU ms / patch | patches/s (CPU) | wall ms / patch | patches/s (wall) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        text.append(
            f"| {name} | {r['cpu_ms']:.3f} | {r['cpu_rate']:,.0f} | {r['wall_ms']:.3f} | {r['wall_rate']:,.0f} |"
        )
    verdict = "PASS" if ratio_cpu >= 2 else "FAIL"
    text += [
        "",
        (
            f"Speed-up over the baseline: **x{ratio_cpu:.2f} on CPU time** (per round: "
            f"{', '.join(f'x{x:.2f}' for x in per_round_ratios)}), x{ratio_wall:.2f} on wall time. "
            f"Target x2: **{verdict}**."
        ),
    ]
    rate = rows["splml"]["cpu_rate"]
    text += [
        "",
        (
            f"Feeding a GPU: 8 workers at {rate:,.0f} patches/s each give about {8 * rate:,.0f} patches/s of decoded, "
            "upsampled, normalised input (one core per worker). See the arithmetic below for what a ResNet-50 at 120 px needs."
        ),
    ]
    result = {"patches": n, "image_size": args.image_size, "upsampling": args.upsampling, "rows": rows,
              "speedup_cpu": ratio_cpu, "speedup_wall": ratio_wall, "per_round": per_round_ratios}  # fmt: skip
    print("\n".join(text))
    if not args.no_write:
        (HERE / f"reader_{args.image_size}_{args.upsampling}.json").write_text(json.dumps(result, indent=2))
        write_generated_block(HERE / "README.md", "reader", "\n".join(text), heading="## reBEN reader throughput")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
