"""What the per-sample machinery costs: training step time per method and heatmap-store memory.

1. Step time. One model (timm backbone + spatial linear head), one fixed batch shaped like the
   datamodule's (image, single-positive ``observed``, ``target``, ``index``, ``padded``, recorded
   ``aug``), and, for each method, its loss instantiated from ``conf/loss/<name>.yaml`` and the
   callbacks it declares (``loss.callbacks(N, L)``). Every timed step drives the real hooks
   around a real optimisation step, as Lightning does::

       on_train_batch_start (every callback) -> forward -> module.loss -> backward -> Adam step
       -> on_train_batch_end (every callback, with training_step's result incl. "outputs")

   The stores are set up (``setup``), primed with one step at epoch 0 (lazy allocations happen
   there), moved to the timed epoch (``on_train_epoch_start`` at ``--epoch``, default 5, where
   EN re-selects expected positives, LL-Cp flips, APL has soft negatives and SCL is active),
   warmed up, then timed: rounds x steps, methods interleaved round-robin (the order rotates
   every round) so that load drift on the shared machine hits every method alike. Reported:
   median ms/step, ratio to ``an``, and the median time spent in the callbacks' batch hooks.

2. Heatmap store memory. A COCO-sized SCL store (N=82,081, L=80, G=14 so W=28) in memory-map
   mode, created and updated through the store's own hooks with a fake trainer (no model):
   file size (apparent and allocated on disk), process RSS (anonymous vs file-backed pages)
   before/after creation and after a few hundred random batch updates, and
   ``HeatmapStore.estimate_bytes`` for the full store and top-k = 3. The file is deleted at the end.

Writes a Markdown table into ``README.md`` (between the ``machinery`` markers) and
``machinery.csv`` next to this file::

    .venv/bin/python experiments/methods/bench_machinery.py [--backbone resnet18] [--batch-size 32]
        [--image-size 120] [--steps 10] [--rounds 3] [--threads 2] [--skip-memory]
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Idle OpenMP workers sleep instead of spinning, so process CPU time measures work done, not time spent
# waiting for a descheduled sibling thread on a loaded machine (set it yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splml.builders import loss_config, register_resolvers
from splml.data.transforms import RecordedSpatialAugment
from splml.methods.base import LossContext
from splml.models.backbone import create_backbone
from splml.models.model import SpatialLinearHead, SPMLModel
from splml.module import SPMLModule
from splml.utils.markdown import block_markers, write_generated_block

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
CSV_PATH = HERE / "machinery.csv"
BEGIN, END = block_markers("machinery")

BASELINE = "an"
#: method -> allowed step-time ratio to AN.
TARGETS = {"en": 1.05, "en_cl": 1.05, "en_scl": 1.15, "role": 1.05, "ll_cp": 1.05, "em_apl": 1.05,
           "adagc": 1.10, "adagc_warmup": 1.10, "adagc_single_ema": 1.10}  # fmt: skip
METHODS = (BASELINE, *TARGETS)
#: Benchmark entries that are a loss YAML with options changed: name -> (loss, overrides).
#: AdaGC's two stages cost differently, so each is timed (a fixed switch, no rollback, puts the
#: timed epoch in it): ``adagc`` in its GC stage (GC loss, Mixup, the per-step EMA update and the
#: forward of both teachers on the batch), ``adagc_warmup`` in its warm-up (AN, the EMA update and
#: the per-step teacher's forward that feeds the monitored curve), ``adagc_single_ema`` in the GC
#: stage with the per-step teacher alone. The rollback's own cost (the snapshot written at every
#: warm-up epoch, the epochs trained again) is per epoch, not per step: ``snapshot_ms`` below.
VARIANTS = {
    "adagc": ("adagc", {"trigger": "fixed", "fixed_epoch": 1}),
    "adagc_warmup": ("adagc", {"trigger": "fixed", "fixed_epoch": 1000}),
    "adagc_single_ema": ("adagc", {"trigger": "fixed", "fixed_epoch": 1, "epoch_teacher": False}),
}
EXPECTED_POSITIVES = 2.9

# COCO-sized heatmap store of the memory part.
COCO_N, COCO_L, COCO_G, COCO_IMAGE = 82_081, 80, 14, 448

README_TEMPLATE = f"""# Method machinery benchmarks

`bench_machinery.py` measures what the callback-owned per-sample stores cost:

* **Training step time** of the store-backed methods (`en`, `en_cl`, `en_scl`, `role`, `ll_cp`,
  `em_apl`) relative to `an`, in one process on the same model and the same fixed batch. Each
  method's loss comes from its `conf/loss/<name>.yaml`, its stores from `loss.callbacks(N, L)`,
  and every timed step runs the real hooks around a real Adam step (`on_train_batch_start`,
  forward, `module.loss`, backward, `optimizer.step`, `on_train_batch_end`), at an epoch where
  every method is fully active (EN's re-selected expected positives, LL-Cp flips, APL soft
  negatives, SCL). Methods are interleaved round-robin across rounds; medians are reported.
  Targets: EMA-store methods within 5 % of `an`, `en_scl` within 15 %.
* **Heatmap store memory** for a COCO-sized SCL store (N = 82,081, L = 80, G = 14, W = 28) in
  memory-map mode: file size, resident memory after creation and after random batch updates,
  and `HeatmapStore.estimate_bytes` for the full store and top-k = 3.

Command (defaults; about 5 minutes on the 2-core CPU machine):

```
.venv/bin/python experiments/methods/bench_machinery.py
```

Options: `--backbone`, `--batch-size`, `--image-size`, `--steps`, `--rounds`, `--threads`,
`--skip-memory` (see `--help`). Raw numbers: `machinery.csv`.

{BEGIN}
{END}
"""


# -- fakes ----------------------------------------------------------------------------------------
class FakeTrainer(SimpleNamespace):
    """What the store callbacks read from a Lightning Trainer."""


def fake_trainer(observed: np.ndarray, targets: np.ndarray, max_epochs: int) -> FakeTrainer:
    train = SimpleNamespace(observed=observed, targets=targets, class_names=[str(c) for c in range(observed.shape[1])])
    return FakeTrainer(
        current_epoch=0,
        max_epochs=max_epochs,
        global_step=0,
        datamodule=SimpleNamespace(datasets={"train": train}),
        is_global_zero=True,
        default_root_dir=tempfile.gettempdir(),
        loggers=[],
        sanity_checking=False,
    )


def random_labels(
    n: int, num_classes: int, expected_positives: float, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Full labels with about ``expected_positives`` positives per row and one observed positive each."""
    targets = torch.rand(n, num_classes, generator=gen) < (expected_positives - 1) / num_classes
    first = torch.randint(0, num_classes, (n,), generator=gen)
    targets[torch.arange(n), first] = True
    observed = torch.zeros(n, num_classes)
    # The single positive: a random true label of each row.
    keys = torch.rand(n, num_classes, generator=gen).masked_fill(~targets, -1.0)
    observed[torch.arange(n), keys.argmax(1)] = 1.0
    return observed.numpy(), targets.float().numpy()


def make_batch(
    observed: np.ndarray, targets: np.ndarray, batch_size: int, channels: int, image_size: int, gen: torch.Generator
) -> dict[str, Any]:
    """A collated training batch like ReBENDataset.__getitem__ + RecordedSpatialAugment + default_collate."""
    n = observed.shape[0]
    index = torch.randperm(n, generator=gen)[:batch_size].sort().values
    augment = RecordedSpatialAugment(crop_scale=(0.5, 1.0), hflip=True, vflip=True)
    items = []
    for i in index.tolist():
        item = {
            "image": torch.randn(channels, image_size, image_size, generator=gen),
            "target": torch.from_numpy(targets[i].astype(np.float32)),
            "observed": torch.from_numpy(observed[i]),
            "index": i,
            "padded": False,
        }
        items.append(augment(item, generator=gen))
    return torch.utils.data.default_collate(items)


def fresh(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the dataloader hands it over (callbacks add extras / replace observed)."""
    return {k: v for k, v in batch.items() if k != "extras"}


# -- methods --------------------------------------------------------------------------------------
def load_loss(name: str) -> torch.nn.Module:
    """The loss of ``loss=<name>`` (as Hydra composes it) with the interpolations the YAMLs use."""
    loss_name, overrides = VARIANTS.get(name, (name, {}))
    cfg = OmegaConf.merge(
        {"dataset": {"expected_positives": EXPECTED_POSITIVES}, "optim": {"linear_probe_epochs": 0}, "seed": 0},
        loss_config(loss_name),
        {"loss": overrides},
    )
    return instantiate(cfg.loss)


class Method:
    def __init__(self, name: str, module: SPMLModule, num_samples: int, num_classes: int, max_epochs: int,
                 observed: np.ndarray, targets: np.ndarray) -> None:  # fmt: skip
        self.name = name
        self.module = module
        self.loss = load_loss(name)
        self.callbacks = self.loss.callbacks(num_samples, num_classes)
        self.trainer = fake_trainer(observed, targets, max_epochs)
        self.steps: list[dict[str, float]] = []  # timed steps: part -> seconds
        self.hooks: dict[tuple[str, str], list[float]] = {}  # (callback, hook) -> seconds
        self.batch_idx = 0
        #: Scalars the loss returned at the last step (shows the method was in its active regime).
        self.last_logs: dict[str, float] = {}

    def start_epoch(self, epoch: int) -> None:
        self.trainer.current_epoch = epoch
        for cb in self.callbacks:
            cb.on_train_epoch_start(self.trainer, self.module)

    def step(self, batch_template: dict[str, Any], optimizer: torch.optim.Optimizer, record: bool) -> None:
        module, trainer = self.module, self.trainer
        module.loss = self.loss  # one model, one optimiser; the method is its loss (+ stores)
        batch = fresh(batch_template)
        i = self.batch_idx
        hooks: dict[tuple[str, str], tuple[float, float]] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        for cb in self.callbacks:
            h, hc = time.perf_counter(), time.process_time()
            cb.on_train_batch_start(trainer, module, batch, i)
            hooks[(type(cb).__name__, "on_train_batch_start")] = (time.perf_counter() - h, time.process_time() - hc)
        t1, c1 = time.perf_counter(), time.process_time()
        # SPMLModule.training_step without self.log (no real trainer here).
        batch.setdefault("extras", {})
        missing = [k for k in self.loss.requires_extras if k not in batch["extras"]]
        if missing:
            raise RuntimeError(f"{self.name}: missing extras {missing}")
        optimizer.zero_grad(set_to_none=True)
        outputs = module.model(batch["image"])
        t2 = time.perf_counter()
        ctx = LossContext(epoch=trainer.current_epoch, max_epochs=trainer.max_epochs, global_step=trainer.global_step)
        result = module.loss(outputs, batch, ctx)
        if isinstance(result, torch.Tensor):
            result = {"loss": result}
        loss = result["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: loss is {loss.item()}")
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5, c5 = time.perf_counter(), time.process_time()
        result["outputs"] = {k: v.detach() for k, v in outputs.items()}
        for cb in self.callbacks:
            h, hc = time.perf_counter(), time.process_time()
            cb.on_train_batch_end(trainer, module, result, batch, i)
            hooks[(type(cb).__name__, "on_train_batch_end")] = (time.perf_counter() - h, time.process_time() - hc)
        t6, c6 = time.perf_counter(), time.process_time()
        trainer.global_step += 1
        self.batch_idx += 1
        self.last_logs = {
            k: float(v) for k, v in result.items() if isinstance(v, torch.Tensor) and v.numel() == 1 and k != "loss"
        }
        if record:
            self.steps.append({
                "total": t6 - t0, "cpu_total": c6 - c0, "hooks": (t1 - t0) + (t6 - t5),
                "cpu_hooks": (c1 - c0) + (c6 - c5), "forward": t2 - t1, "loss": t3 - t2, "backward": t4 - t3,
                "optimizer": t5 - t4,
            })  # fmt: skip
            for key, value in hooks.items():
                self.hooks.setdefault(key, []).append(value)

    def median(self, part: str) -> float:
        return statistics.median(s[part] for s in self.steps)


def time_steps(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    observed, targets = random_labels(args.num_samples, args.num_classes, EXPECTED_POSITIVES, gen)
    batch = make_batch(observed, targets, args.batch_size, args.channels, args.image_size, gen)
    backbone = create_backbone(args.backbone, in_chans=args.channels)
    model = SPMLModel(backbone, SpatialLinearHead(int(backbone.num_features), args.num_classes))
    module = SPMLModule(model=model, loss=load_loss(BASELINE), num_classes=args.num_classes)
    module.train()
    optimizer = torch.optim.Adam(module.model.parameters(), lr=module.lr, weight_decay=1e-4)
    max_epochs = args.epoch + 5

    names = [BASELINE, *(m for m in args.methods if m != BASELINE)]
    methods = [Method(m, module, args.num_samples, args.num_classes, max_epochs, observed, targets) for m in names]
    for method in methods:
        for cb in method.callbacks:
            cb.setup(method.trainer, module, "fit")
        method.start_epoch(0)
        method.step(batch, optimizer, record=False)  # epoch 0: lazy allocations (heatmap store)
        method.start_epoch(args.epoch)
        for _ in range(args.warmup):
            method.step(batch, optimizer, record=False)
        print(f"  {method.name}: stores {[type(c).__name__ for c in method.callbacks]}", flush=True)

    passes = 0
    for r in range(args.rounds):
        for _ in range(args.steps):
            # Round-robin, one step per method per pass; the order rotates every pass.
            shift = passes % len(methods)
            for method in methods[shift:] + methods[:shift]:
                method.step(batch, optimizer, record=True)
            passes += 1
        print(f"  round {r + 1}/{args.rounds} (median wall / CPU ms): " + ", ".join(
            f"{m.name} {1e3 * statistics.median(s['total'] for s in m.steps[-args.steps:]):.0f}"
            f"/{1e3 * statistics.median(s['cpu_total'] for s in m.steps[-args.steps:]):.0f}" for m in methods
        ), flush=True)  # fmt: skip

    base = next(m for m in methods if m.name == BASELINE)
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m.name, "stores": "+".join(type(c).__name__ for c in m.callbacks) or "-"}
        for clock, key in (("wall", "total"), ("cpu", "cpu_total")):
            values = [1e3 * s[key] for s in m.steps]
            base_values = [1e3 * s[key] for s in base.steps]
            # Per-round ratio (the method's median / AN's median in the same round): a noise indicator.
            per_round = [
                statistics.median(values[k * args.steps : (k + 1) * args.steps])
                / statistics.median(base_values[k * args.steps : (k + 1) * args.steps])
                for k in range(args.rounds)
            ]
            row.update({
                f"{clock}_ms": statistics.median(values),
                f"{clock}_p25": float(np.percentile(values, 25)),
                f"{clock}_p75": float(np.percentile(values, 75)),
                f"{clock}_ratio": statistics.median(values) / statistics.median(base_values),
                f"{clock}_ratio_round_min": min(per_round),
                f"{clock}_ratio_round_max": max(per_round),
            })  # fmt: skip
        target = TARGETS.get(m.name)
        row.update({
            "hooks_ms": 1e3 * m.median("hooks"),
            "cpu_hooks_ms": 1e3 * m.median("cpu_hooks"),
            "hooks_share": m.median("hooks") / base.median("total"),
            "cpu_hooks_share": m.median("cpu_hooks") / base.median("cpu_total"),
            "forward_ms": 1e3 * m.median("forward"),
            "loss_ms": 1e3 * m.median("loss"),
            "backward_ms": 1e3 * m.median("backward"),
            "optimizer_ms": 1e3 * m.median("optimizer"),
            "target": target,
            "pass_cpu": None if target is None else row["cpu_ratio"] <= target,
            "pass_wall": None if target is None else row["wall_ratio"] <= target,
            "steps": len(m.steps),
            "active": ", ".join(f"{k}={v:.3g}" for k, v in m.last_logs.items()) or "-",
        })  # fmt: skip
        rows.append(row)
    hook_rows = [
        {"method": m.name, "callback": cb, "hook": hook, "ms": 1e3 * statistics.median(w for w, _ in v),
         "cpu_ms": 1e3 * statistics.median(c for _, c in v)}
        for m in methods for (cb, hook), v in m.hooks.items()
    ]  # fmt: skip
    if args.profile:
        for m in methods:
            if m.name in args.profile:
                profile(m, batch, optimizer, args.profile_steps)
    for row, m in zip(rows, methods, strict=True):
        if m.name.startswith("adagc"):
            row["snapshot_ms"] = snapshot_ms(m, optimizer)
            print(f"  {m.name}: one rollback snapshot written in {row['snapshot_ms']:.0f} ms", flush=True)
    info = {"num_features": int(backbone.num_features)}
    model.eval()
    with torch.no_grad():
        info["grid"] = int(model(batch["image"][:1])["maps"].shape[-1])
    model.train()
    return rows, hook_rows, info


def snapshot_ms(method: Method, optimizer: torch.optim.Optimizer, repeats: int = 3) -> float:
    """Median time to write one of AdaGC's rollback snapshots (what ``rollback.training_state`` holds:
    the module's weights, the optimizer, every store with its teachers) to a temporary file."""
    from splml.methods.store import StoreCallback

    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            start = time.perf_counter()
            state = {
                "module": {k: v.detach().cpu().clone() for k, v in method.module.state_dict().items()},
                "optimizers": [optimizer.state_dict()],
                "stores": {cb.state_key: cb.state_dict() for cb in method.callbacks if isinstance(cb, StoreCallback)},
            }
            torch.save(state, Path(folder) / f"epoch_{i:03d}.pt")
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def profile(method: Method, batch: dict[str, Any], optimizer: torch.optim.Optimizer, steps: int) -> None:
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function(f"step[{method.name}]"):
                method.step(batch, optimizer, record=False)
    print(f"\n## torch.profiler, {method.name}, {steps} steps (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


# -- heatmap store memory -------------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of this process, bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def page_cache_bytes(array: np.ndarray) -> int:
    """Bytes of a memory-mapped array's file that sit in the page cache (``mincore``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    addr, length = array.ctypes.data, array.nbytes
    pages = (length + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        return -1
    return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()) * page


def read_ahead_kb(path: Path) -> str:
    """The block device's read-ahead window (mmap faults read around this much)."""
    try:
        dev = os.stat(path).st_dev
        sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        queue = sys_dev / "queue" if (sys_dev / "queue").exists() else sys_dev.resolve().parent / "queue"
        return (queue / "read_ahead_kb").read_text().strip()
    except OSError:
        return "?"


def heatmap_memory(args: argparse.Namespace, advice: str = "default") -> dict[str, Any]:
    """COCO-sized memmap store created and updated through its hooks; ``advice="random"`` additionally
    applies ``madvise(MADV_RANDOM)`` to the map right after the store opens it (a what-if, not the
    store's behaviour)."""
    import mmap

    from splml.methods.scl.store import HeatmapStore

    n, num_classes, grid = COCO_N, COCO_L, COCO_G
    width = 2 * grid
    full_bytes = HeatmapStore.estimate_bytes(n, num_classes, grid)
    topk_bytes = HeatmapStore.estimate_bytes(n, num_classes, grid, topk=3)
    parent = Path(args.memmap_parent or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    tmp = Path(tempfile.mkdtemp(prefix="heatmap-bench-", dir=parent))
    gen = torch.Generator().manual_seed(1)
    observed, targets = random_labels(n, num_classes, EXPECTED_POSITIVES, gen)
    trainer = fake_trainer(observed, targets, max_epochs=1)
    device_module = SimpleNamespace(device=torch.device("cpu"), training=True)
    b = args.memory_batch_size
    result: dict[str, Any] = {
        "advice": advice, "N": n, "L": num_classes, "G": grid, "W": width, "batches": args.memory_batches,
        "batch_size": b, "estimate_full": full_bytes, "estimate_topk3": topk_bytes, "free_disk": free,
        "read_ahead_kb": read_ahead_kb(parent), "dir": str(tmp),
    }  # fmt: skip
    try:
        store = HeatmapStore(
            n, num_classes, grid_size=grid, image_size=COCO_IMAGE, memmap_dir=str(tmp), log_diagnostics=False
        )  # fmt: skip
        if advice == "random":
            memmap, open_memmap = store.memmap, store.memmap.open

            def open_with_advice(shape: tuple[int, ...], mode: str) -> torch.Tensor:
                tensor = open_memmap(shape, mode)
                memmap.array._mmap.madvise(mmap.MADV_RANDOM)  # type: ignore[union-attr]
                return tensor

            memmap.open = open_with_advice  # type: ignore[method-assign]
        store.setup(trainer, device_module, "fit")
        gc.collect()
        rss0 = proc_status()

        def random_batch() -> dict[str, Any]:
            index = torch.randperm(n, generator=gen)[:b]
            scale = 0.5 + 0.5 * torch.rand(b, generator=gen)
            h = (COCO_IMAGE * scale.sqrt()).long()
            top = (torch.rand(b, generator=gen) * (COCO_IMAGE - h + 1)).long()
            left = (torch.rand(b, generator=gen) * (COCO_IMAGE - h + 1)).long()
            aug = {
                "crop": torch.stack((top, left, h, h), 1),
                "flip": torch.rand(b, generator=gen) < 0.5,
                "vflip": torch.zeros(b, dtype=torch.bool),
            }
            return {"index": index, "aug": aug, "observed": torch.from_numpy(observed[index.numpy()])}

        # The first batch allocates the store (writes 255 at the annotated entries) through _attach.
        first = random_batch()
        t = time.perf_counter()
        store.on_train_batch_start(trainer, device_module, first, 0)
        result["create_s"] = time.perf_counter() - t
        rss1 = proc_status()
        assert store.memmap.array is not None
        cache1 = page_cache_bytes(store.memmap.array)
        live = store.live_path
        allocated1 = live.stat().st_blocks * 512
        times = []
        for i in range(args.memory_batches):
            batch = first if i == 0 else random_batch()
            maps = torch.randn(b, num_classes, grid, grid, generator=gen)
            outputs = {"outputs": {"maps": maps, "logits": maps.mean((-2, -1))}}
            t = time.perf_counter()
            if i > 0:
                store.on_train_batch_start(trainer, device_module, batch, i)
            store.on_train_batch_end(trainer, device_module, outputs, batch, i)
            times.append(time.perf_counter() - t)
            trainer.global_step += 1
        rss2 = proc_status()
        cache2 = page_cache_bytes(store.memmap.array)
        store.flush()
        rss3 = proc_status()
        stat = live.stat()
        result.update(
            file_bytes=stat.st_size, file_allocated_created=allocated1, file_allocated=stat.st_blocks * 512,
            rss_before=rss0, rss_created=rss1, rss_updated=rss2, rss_flushed=rss3, page_cache_created=cache1,
            page_cache_updated=cache2, bytes_per_sample=store.bytes_per_sample(),
            update_ms=1e3 * statistics.median(times[1:]) if len(times) > 1 else float("nan"),
            row_updates=args.memory_batches * b,
        )  # fmt: skip
        assert stat.st_size == full_bytes, (stat.st_size, full_bytes)
        store.memmap.close()  # close the map before deleting the file
        del store
        gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["deleted"] = not tmp.exists()
    return result


# -- report ---------------------------------------------------------------------------------------
def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], hook_rows: list[dict[str, Any]],
             info: dict[str, Any], memory: list[dict[str, Any]] | None, wall: float) -> str:  # fmt: skip
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())  # fmt: skip
    lines = [
        (
            f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
            f"`torch.set_num_threads({args.threads})`; the machine is shared, so absolute times drift."
        ),
        "",
        f"Command: `{' '.join(['.venv/bin/python experiments/methods/bench_machinery.py', *sys.argv[1:]])}` "
        + f"(wall time {wall / 60:.1f} min).",
        "",
        (
            f"### Training step time ({args.backbone}, {args.channels} x {args.image_size} x {args.image_size} "
            f"inputs, batch {args.batch_size}, L = {args.num_classes}, G = {info['grid']}, store N = "
            f"{args.num_samples}, epoch {args.epoch}, median of {args.rounds} rounds x {args.steps} steps after "
            f"{args.warmup} warm-up steps)"
        ),
        "",
        (
            "Verdict on CPU time (`time.process_time()`, both threads): the machine is shared, and wall-clock "
            "steps are stretched by other processes' load far more than by anything measured here; the wall-clock "
            "ratio is shown next to it."
        ),
        "",
        (
            "| method | stores (callbacks) | wall ms/step (IQR) | wall ratio (per round) | CPU ms/step (IQR) | "
            "CPU ratio (per round) | hooks wall / CPU ms | hooks CPU / `an` step | loss ms | target | result (CPU) "
            "| result (wall) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def verdict(ok: bool | None) -> str:
        return "baseline" if ok is None else ("PASS" if ok else "FAIL")

    for r in rows:
        target = "-" if r["target"] is None else f"<= {r['target']:.2f}"
        lines.append(
            f"| `{r['method']}` | {r['stores']} | {r['wall_ms']:.0f} ({r['wall_p25']:.0f}-{r['wall_p75']:.0f}) | "
            f"{r['wall_ratio']:.3f} ({r['wall_ratio_round_min']:.2f}-{r['wall_ratio_round_max']:.2f}) | "
            f"{r['cpu_ms']:.0f} ({r['cpu_p25']:.0f}-{r['cpu_p75']:.0f}) | "
            f"{r['cpu_ratio']:.3f} ({r['cpu_ratio_round_min']:.2f}-{r['cpu_ratio_round_max']:.2f}) | "
            f"{r['hooks_ms']:.2f} / {r['cpu_hooks_ms']:.2f} | {100 * r['cpu_hooks_share']:.2f} % | {r['loss_ms']:.1f} | "
            f"{target} | {verdict(r['pass_cpu'])} | {verdict(r['pass_wall'])} |"
        )
    base = rows[0]
    lines += ["", "Loss outputs at the last timed step (the methods run in their active regime):", ""]
    lines += [f"- `{r['method']}`: {r['active']}" for r in rows]
    lines += [
        "",
        (
            f"`an` step parts (median ms): forward {base['forward_ms']:.1f}, loss {base['loss_ms']:.2f}, "
            f'backward {base["backward_ms"]:.1f}, Adam {base["optimizer_ms"]:.1f}. "hooks" = every callback\'s '
            '`on_train_batch_start` + `on_train_batch_end` of the step; "per-round ratio" = the method\'s median '
            "over AN's in each round (spread = measurement noise)."
        ),
        "",
        "Batch hooks per callback (median per step):",
        "",
        "| method | callback | hook | wall ms | CPU ms |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| `{h['method']}` | {h['callback']} | `{h['hook']}` | {h['ms']:.3f} | {h['cpu_ms']:.3f} |" for h in hook_rows
    ]
    if memory:
        m, variants = memory[0], memory
        heads = " | ".join(
            "as implemented" if v["advice"] == "default" else f"with `MADV_{v['advice'].upper()}` (what-if)"
            for v in variants
        )
        sep = "|".join("---:" for _ in variants)

        def row(label: str, fmt: Any) -> str:
            return f"| {label} | " + " | ".join(fmt(v) for v in variants) + " |"

        def rss(key: str) -> Any:
            return lambda v: (
                f"{mib(v[key]['VmRSS'] - v['rss_before']['VmRSS'])} "
                f"(anon {mib(v[key]['RssAnon'] - v['rss_before']['RssAnon'])}, "
                f"file {mib(v[key]['RssFile'] - v['rss_before']['RssFile'])})"
            )

        touched_mib = m["row_updates"] * m["bytes_per_sample"] / 2**20
        lines += [
            "",
            (
                f"### Heatmap store memory (COCO-sized: N = {m['N']:,}, L = {m['L']}, G = {m['G']}, W = {m['W']}; "
                f"memory-map mode, {m['batches']} batch updates of {m['batch_size']} random samples)"
            ),
            "",
            (
                f"`HeatmapStore.estimate_bytes`: full {m['estimate_full']:,} B ({gb(m['estimate_full'])}, "
                f"{m['bytes_per_sample']:,} B per sample); top-k = 3: {m['estimate_topk3']:,} B "
                f"({gb(m['estimate_topk3'])}, {m['estimate_topk3'] // m['N']:,} B per sample)."
            ),
            "",
            f"| quantity | {heads} |",
            f"|---|{sep}|",
            row("live file size (apparent)", lambda v: f"{v['file_bytes']:,} B ({gb(v['file_bytes'])})"),
            row("file allocated on disk after creation (sparse file)", lambda v: mib(v["file_allocated_created"])),
            row(
                f"file allocated on disk after the updates (rows written: {touched_mib:,.0f} MiB)",
                lambda v: mib(v["file_allocated"]),
            ),
            row(f"creation (allocate, write 255 at the {m['N']:,} annotated maps)", lambda v: f"{v['create_s']:.2f} s"),
            row(
                f"one batch update ({m['batch_size']} samples, `on_train_batch_start` + `_end`, median)",
                lambda v: f"{v['update_ms']:.1f} ms",
            ),
            row("VmRSS growth after creation", rss("rss_created")),
            row("VmRSS growth after the updates", rss("rss_updated")),
            row("VmRSS growth after flush", rss("rss_flushed")),
            row("file pages in the page cache after creation (`mincore`)", lambda v: mib(v["page_cache_created"])),
            row("file pages in the page cache after the updates", lambda v: mib(v["page_cache_updated"])),
            "",
            (
                f"VmRSS before creation: {mib(m['rss_before']['VmRSS'])}. Block-device read-ahead here: "
                f"{m['read_ahead_kb']} KiB. Free disk where the file lived: {gb(m['free_disk'])}; "
                '`numpy.memmap(mode="w+")` creates a sparse file, so only written pages take disk space. The file '
                f"was deleted afterwards: {all(v['deleted'] for v in variants)}."
            ),
        ]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], hook_rows: list[dict[str, Any]], memory: list[dict[str, Any]] | None) -> None:
    """Long format: section, item, metric, value."""
    out: list[tuple[str, str, str, Any]] = []
    for r in rows:
        for k, v in r.items():
            if k not in ("method", "stores", "active"):
                out.append(("step_time", r["method"], k, v))
    for h in hook_rows:
        out.append(("hook_ms", f"{h['method']}/{h['callback']}", h["hook"], h["ms"]))
    for variant in memory or []:
        item = f"coco_memmap_{variant['advice']}"
        for k, v in variant.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    out.append(("heatmap_memory", item, f"{k}.{kk}", vv))
            elif k not in ("dir", "advice"):
                out.append(("heatmap_memory", item, k, v))
    with CSV_PATH.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("section", "item", "metric", "value"))
        for section, item, metric, value in out:
            writer.writerow((section, item, metric, f"{value:.6g}" if isinstance(value, float) else value))


def write_readme(block: str) -> None:
    if not README.exists():
        README.write_text(README_TEMPLATE)
    write_generated_block(README, "machinery", block)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18", help="timm model name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=120)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--num-samples", type=int, default=2000, help="store size N of the timing part")
    p.add_argument("--steps", type=int, default=4, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3, help="round-robin repetitions")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method at the timed epoch")
    p.add_argument("--epoch", type=int, default=5, help="epoch of the timed steps (>= APL warm-up of 5)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--skip-memory", action="store_true", help="skip the COCO-sized heatmap store part")
    p.add_argument("--memory-batches", type=int, default=200)
    p.add_argument("--memory-batch-size", type=int, default=32)
    p.add_argument("--memmap-parent", default=None, help="folder for the temporary memmap file (default: $TMPDIR)")
    p.add_argument(
        "--memmap-advice",
        nargs="*",
        default=[],
        choices=["random"],
        help="also measure the store with these madvise hints applied to its map (what-if)",
    )
    p.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods to time (with an)"
    )
    p.add_argument("--profile", nargs="*", default=[], help="methods to run under torch.profiler after timing")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave README.md and machinery.csv alone")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")  # stores log diagnostics; no trainer here
    warnings.filterwarnings("ignore", message=r".*`self.trainer` reference is not registered.*")
    register_resolvers()
    torch.set_num_threads(args.threads)
    started = time.time()
    print(f"step time: {', '.join(METHODS)}", flush=True)
    rows, hook_rows, info = time_steps(args)
    memory = None
    if not args.skip_memory:
        print("heatmap store memory (COCO-sized, memmap)", flush=True)
        memory = [heatmap_memory(args, advice) for advice in ("default", *args.memmap_advice)]
    block = markdown(args, rows, hook_rows, info, memory, time.time() - started)
    print()
    print(block)
    verdicts = [
        f"{r['method']}: CPU {'PASS' if r['pass_cpu'] else 'FAIL'} ({r['cpu_ratio']:.3f}), wall "
        f"{'PASS' if r['pass_wall'] else 'FAIL'} ({r['wall_ratio']:.3f}); target <= {r['target']:.2f}"
        for r in rows
        if r["target"] is not None
    ]
    print("\n".join(verdicts))
    if not args.no_write:
        write_readme(block)
        write_csv(rows, hook_rows, memory)
        print(f"\nwrote {README} and {CSV_PATH}")


if __name__ == "__main__":
    main()
