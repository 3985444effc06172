"""SCL's heatmap store at ImageNet scale: resident memory and cost per step and per epoch end.

The store of the spatial-consistency paper's ImageNet setting: N = 1,281,167 training images,
L = 1000 classes, heatmaps for the k = 10 top-scoring classes, W = 14 (G = 7 score maps at 224 px),
memory-mapped (``loss.term.memmap_dir``): a file of N * k * W^2 = 2.5 GB plus N x k class ids in
RAM. Driven through the store's own hooks with a stand-in trainer (no model, as
``bench_machinery.py`` does): creation (first batch), training steps of ``--batch-size`` random
samples (``on_train_batch_start``: warp the targets; ``on_train_batch_end``: choose the classes
at the first update, EMA-update the rows), the end-of-epoch pass (flush + the diagnostics
streamed over all N samples) and one checkpoint snapshot (a checksummed copy of the file).

The training split's labels, which the store reads (``datasets["train"].observed`` / ``.targets``,
N x L), are memory-mapped files here, so that the process's anonymous memory is the store's own;
in a run they are the datamodule's arrays. Reported: the live file, anonymous and file-backed
resident memory (``/proc/self/status``) after each phase and the peak anonymous memory during the
epoch-end pass (sampled every 10 ms), and the times. Writes a table into this folder's README.md
(block ``heatmap_imagenet``)::

    python experiments/methods/bench_heatmap_imagenet.py [--samples 1281167] [--steps 50] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from splml.methods.scl.store import HeatmapStore
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
IMAGE, GRID, CLASSES, TOPK = 224, 7, 1000, 10


def proc_kib() -> dict[str, int]:
    """RssAnon / RssFile / VmRSS of this process, KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


class PeakAnon:
    """Samples RssAnon every 10 ms in a thread; ``peak`` after ``stop``."""

    def __init__(self) -> None:
        self.peak = proc_kib()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, proc_kib()["RssAnon"])

    def __enter__(self) -> PeakAnon:  # noqa: PYI034 - a final helper class
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def label_files(folder: Path, n: int, rng: np.random.Generator) -> tuple[np.memmap, np.memmap]:
    """(observed float32, targets uint8) N x L memory-mapped, one label per image (ImageNet's)."""
    labels = rng.integers(0, CLASSES, n)
    observed = np.memmap(folder / "observed.f32", dtype=np.float32, mode="w+", shape=(n, CLASSES))
    targets = np.memmap(folder / "targets.u8", dtype=np.uint8, mode="w+", shape=(n, CLASSES))
    for start in range(0, n, 100_000):
        rows = np.arange(start, min(start + 100_000, n))
        observed[rows, labels[rows]] = 1.0
        targets[rows, labels[rows]] = 1
    observed.flush()
    targets.flush()
    return observed, targets


def batch(indices: torch.Tensor, rng: torch.Generator) -> dict[str, Any]:
    b = indices.numel()
    crop = torch.stack(
        [torch.zeros(b), torch.zeros(b), torch.full((b,), float(IMAGE)), torch.full((b,), float(IMAGE))], 1
    )
    side = torch.rand(b, generator=rng) * 0.7 + 0.3
    crop[:, 2:] *= side[:, None]
    return {
        "index": indices, "image": torch.zeros(b, 3, IMAGE, IMAGE),
        "aug": {"crop": crop, "flip": torch.rand(b, generator=rng) < 0.5, "vflip": torch.zeros(b, dtype=torch.bool)},
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="heatmap-imagenet-", dir=args.dir))
    n, out = args.samples, {}
    try:
        observed, targets = label_files(folder, n, rng)
        train = SimpleNamespace(observed=observed, targets=targets, class_names=[str(c) for c in range(CLASSES)])
        trainer = SimpleNamespace(
            datamodule=SimpleNamespace(datasets={"train": train}), global_step=0, current_epoch=0,
            is_global_zero=True, default_root_dir=str(folder), loggers=[],
        )  # fmt: skip
        logged: dict[str, float] = {}
        module = SimpleNamespace(device=torch.device("cpu"), log=lambda k, v, **kw: logged.__setitem__(k, v))
        store = HeatmapStore(
            n, CLASSES, grid_size=GRID, image_size=IMAGE, topk=TOPK, memmap_dir=str(folder / "store"),
            plot_every_n_epochs=0,
        )  # fmt: skip
        out["estimate_bytes"] = HeatmapStore.estimate_bytes(n, CLASSES, GRID, topk=TOPK)
        out["full_store_bytes"] = HeatmapStore.estimate_bytes(n, CLASSES, GRID)
        out["rss_before"] = proc_kib()
        first = batch(torch.randperm(n, generator=gen)[: args.batch_size], gen)
        t0 = time.perf_counter()
        with PeakAnon() as peak:
            store.on_train_batch_start(trainer, module, first, 0)
        out["create_s"], out["create_peak_anon"] = time.perf_counter() - t0, peak.peak
        out["rss_created"] = proc_kib()
        out["file_bytes"] = store.live_path.stat().st_size
        starts, ends = [], []
        order = torch.randperm(n, generator=gen)
        for step in range(args.steps):
            b = batch(order[step * args.batch_size : (step + 1) * args.batch_size], gen)
            maps = torch.randn(args.batch_size, CLASSES, GRID, GRID, generator=gen)
            outputs = {"outputs": {"maps": maps, "logits": maps.mean(dim=(-2, -1))}}
            t0 = time.perf_counter()
            store.on_train_batch_start(trainer, module, b, step)
            t1 = time.perf_counter()
            store.on_train_batch_end(trainer, module, outputs, b, step)
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            ends.append(t2 - t1)
        out["step_start_ms"] = 1000 * statistics.median(starts[1:])
        out["step_end_ms"] = 1000 * statistics.median(ends[1:])
        out["rss_steps"] = proc_kib()
        t0 = time.perf_counter()
        with PeakAnon() as peak:
            store.on_train_epoch_end(trainer, module)
        out["epoch_end_s"], out["epoch_end_peak_anon"] = time.perf_counter() - t0, peak.peak
        out["rss_epoch_end"] = proc_kib()
        out["diagnostics"] = dict(logged)
        t0 = time.perf_counter()
        state = store.state_dict()
        out["snapshot_s"] = time.perf_counter() - t0
        out["snapshot_bytes"] = Path(state["memmap"]["path"]).stat().st_size
        out["classes_bytes"] = store.classes.numel() * store.classes.element_size()
        out["observed_bytes"] = store.observed.numel() * store.observed.element_size()
        store.memmap.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def markdown(args: argparse.Namespace, r: dict[str, Any], wall: float) -> str:
    before = r["rss_before"]

    def growth(key: str) -> str:
        now = r[key]
        return f"{mib(now['RssAnon'] - before['RssAnon'])} anon, {mib(now['RssFile'] - before['RssFile'])} file"

    return "\n".join(
        [
            (
                f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} at the end (shared machine: times are "
                "indicative)."
            ),
            "",
            (
                f"Command: `python experiments/methods/bench_heatmap_imagenet.py --samples {args.samples} --steps {args.steps} "
                f"--batch-size {args.batch_size}` (wall time {wall / 60:.1f} min)."
            ),
            "",
            (
                f"N = {args.samples:,}, L = {CLASSES}, k = {TOPK}, G = {GRID}, W = {2 * GRID}, memory-mapped; "
                f"`HeatmapStore.estimate_bytes`: top-k {gb(r['estimate_bytes'])} (maps + class ids), the full store would be "
                f"{gb(r['full_store_bytes'])}."
            ),
            "",
            "| quantity | value |",
            "|---|---:|",
            f"| live file (N x k x W x W uint8) | {gb(r['file_bytes'])} |",
            f"| class ids in RAM (N x k int64) | {gb(r['classes_bytes'])} |",
            f"| annotations read at the first batch (N x L bool) | {gb(r['observed_bytes'])} |",
            f"| creation (first batch: allocate, 255 at the annotated maps) | {r['create_s']:.1f} s |",
            f"| resident growth after creation | {growth('rss_created')} |",
            (
                f"| peak anonymous memory during creation (above the level before it) | "
                f"{mib(r['create_peak_anon'] - before['RssAnon'])} |"
            ),
            f"| `on_train_batch_start` per step (batch {args.batch_size}, median) | {r['step_start_ms']:.1f} ms |",
            f"| `on_train_batch_end` per step (classes chosen, EMA update) | {r['step_end_ms']:.1f} ms |",
            f"| resident growth after {args.steps} steps | {growth('rss_steps')} |",
            f"| end-of-epoch pass (flush + streamed diagnostics over N) | {r['epoch_end_s']:.1f} s |",
            (
                f"| peak anonymous memory during the epoch-end pass (above the level before it) | "
                f"{mib(r['epoch_end_peak_anon'] - r['rss_steps']['RssAnon'])} |"
            ),
            f"| resident growth after the epoch-end pass | {growth('rss_epoch_end')} |",
            f"| checkpoint snapshot (checksummed copy of the file) | {r['snapshot_s']:.1f} s, {gb(r['snapshot_bytes'])} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1_281_167)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="folder for the temporary files (default: $TMPDIR)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    started = time.time()
    result = run(args)
    block = markdown(args, result, time.time() - started)
    print(block)
    print(result["diagnostics"])
    if not args.no_write:
        write_generated_block(
            HERE / "README.md", "heatmap_imagenet", block, heading="## SCL heatmap store at ImageNet scale"
        )


if __name__ == "__main__":
    main()
