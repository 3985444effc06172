"""Training throughput (images/s): the model alone, the whole pipeline, and the methods with stores.

(a) ``model``: the network alone on synthetic tensors already on the device -- forward,
    binary cross-entropy, backward, Adam step, in the run's precision (autocast) and memory
    format. The ceiling the data path and the methods are measured against.
(b) ``an``: the whole training pipeline of ``python -m splml.train loss=an``: the real configs
    (composed by Hydra with the trainer's loader settings), the synthetic dataset in the reBEN
    format read from its LMDB, the recorded augmentation (crop and flips; on the device where
    the loader settings say so), the Lightning ``Trainer`` and the module's training step.
(c) the same pipeline for ``loss=en_scl`` (EN with the SCL heatmap store), ``loss=adagc`` (a
    per-sample EMA store, a weight-EMA teacher and its forward), ``head=q2l`` (Query2Label) and
    ``task=retrieval loss=macl`` (two views per image; throughput counts images, not views).

Every pipeline case trains ``--epochs`` epochs of ``--steps`` batches without validation; the
last epoch is timed from the end of its first batch to the end of its last (the device
synchronised), so worker start-up, cuDNN autotuning and compilation stay out while loading,
augmentation, transfer, the step and the stores' updates of every timed batch count.
Cases are interleaved over ``--rounds`` rounds (the order rotates) and the median is reported,
with two ratios: (b) / (a) (target on a GPU: >= 0.80) and each case's time per image relative to
AN (``an`` / case throughput; the CPU targets of ``experiments/methods``: <= 1.05 for the EMA
stores, 1.10 for AdaGC with its teacher, 1.15 for SCL).

Defaults: on a GPU, the issue's setting -- ResNet-50, 120 px, 12 bands, batch 256, ``bf16-mixed``,
``trainer=gpu``; on a CPU, small sizes with the same ratios -- ResNet-10t, 32 px, batch 16,
``32-true`` (bf16 matmuls on a CPU are emulated and would time the emulation), timed in process CPU
time (``--clock cpu``: on a shared machine wall time measures the neighbours; one thread and no
loader workers there, so CPU time is the work done). Writes the table
into ``README.md`` next to this file (between the ``throughput-<device>`` markers) and the raw
numbers into ``throughput_<device>.json``::

    python experiments/gpu/bench_throughput.py [--device cpu|gpu] [--backbone resnet50] [--image-size 120]
        [--batch-size 256] [--precision bf16-mixed] [--steps 20] [--epochs 2] [--rounds 3] [--threads N]
        [--cases an en_scl ...] [--compile] [--channels-last] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from splml.builders import build_datamodule, build_module, config_dir, register_resolvers
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

#: Pipeline case -> its overrides of the training config.
CASES: dict[str, list[str]] = {
    "an": ["loss=an"],
    "en_scl": ["loss=en_scl"],
    "adagc": ["loss=adagc"],
    "q2l": ["loss=an", "head=q2l"],
    "retrieval_macl": ["task=retrieval", "loss=macl"],
}
#: Time-per-image ratio to AN allowed (the CPU step-time targets of experiments/methods/README.md).
TARGETS = {"en_scl": 1.15, "adagc": 1.10}
DEFAULTS = {
    "gpu": {
        "backbone": "resnet50",
        "image_size": 120,
        "batch_size": 256,
        "precision": "bf16-mixed",
        "steps": 20,
        "clock": "wall",
    },
    "cpu": {
        "backbone": "resnet10t",
        "image_size": 32,
        "batch_size": 16,
        "precision": "32-true",
        "steps": 12,
        "clock": "cpu",
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", help="timm backbone config (conf/backbone/<name>.yaml)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", help="trainer.precision: 32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--steps", type=int, help="training batches per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per case; the last one is timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last=true")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), help="wall time (default on a GPU) or process CPU time (default on a CPU)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def compose_case(args: argparse.Namespace, overrides: list[str], work: Path) -> DictConfig:
    """The training config of ``python -m splml.train <overrides>`` at the benchmark's sizes."""
    n_train = args.batch_size * args.steps
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"trainer={args.device}",
                f"trainer.precision={args.precision}",
                f"backbone={args.backbone}",
                "dataset=synthetic",
                f"dataset.datamodule.image_size={args.image_size}",
                f"dataset.datamodule.batch_size={args.batch_size}",
                f"dataset.datamodule.synthetic.n_train={n_train}",
                "dataset.datamodule.synthetic.n_validation=8",
                "dataset.datamodule.synthetic.n_test=8",
                "dataset.datamodule.augment.crop_scale=[0.5,1.0]",
                f"model.channels_last={str(args.channels_last).lower()}",
                f"model.compile={str(args.compile).lower()}",
                f"paths.cache_dir={work / 'cache'}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


class EpochTimer(L.Callback):
    """Images and wall time of the last training epoch after its first batch."""

    def __init__(self, epochs: int, clock: str) -> None:
        self.epochs, self.clock, self.start, self.end, self.images = epochs, clock, 0.0, 0.0, 0

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return now(self.clock)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.current_epoch != self.epochs - 1:
            return
        # The first batch's end opens the clock: every later batch is timed from its loading to its
        # stores' updates, and the epoch's start (iterator, workers) stays out.
        now = self._now(pl_module)
        if idx == 0:
            self.start = now
        else:
            self.end, self.images = now, self.images + int(batch["index"].shape[0])


def now(clock: str) -> float:
    """Seconds on the wall clock, or of this process's CPU time (``cpu``: robust on a shared machine)."""
    return time.process_time() if clock == "cpu" else time.perf_counter()


def time_pipeline(args: argparse.Namespace, case: str, work: Path) -> float:
    """Images/s of the last epoch of ``splml.train`` with the case's overrides."""
    cfg = compose_case(args, CASES[case], work)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    timer = EpochTimer(args.epochs, args.clock)
    callbacks = [timer, *module.loss.callbacks(num_samples=len(datamodule.datasets["train"]),
                                               num_classes=datamodule.num_classes)]  # fmt: skip
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "gpu" else "cpu", devices=1, precision=args.precision,
        max_epochs=args.epochs, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, default_root_dir=str(work / "run"), callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return timer.images / (timer.end - timer.start)


def time_model(args: argparse.Namespace, work: Path) -> float:
    """Images/s of the network alone (forward, BCE, backward, Adam) on tensors already on the device."""
    cfg = compose_case(args, CASES["an"], work)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    model = build_module(cfg, datamodule).model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch_size, datamodule.num_channels, args.image_size, args.image_size)
    images = torch.randn(shape, device=device, generator=generator)
    targets = (torch.rand(args.batch_size, datamodule.num_classes, device=device, generator=generator) < 0.15).float()
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    def step() -> None:
        with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
            logits = model(images)["logits"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.steps):  # warm-up: allocator, cuDNN autotuning, compilation
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = now(args.clock)
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch_size * args.steps / (now(args.clock) - start)


def machine(args: argparse.Namespace) -> str:
    if args.device == "gpu":
        return f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{os.cpu_count()} CPU cores ({cpu}), torch.get_num_threads() = {torch.get_num_threads()}"


def markdown(args: argparse.Namespace, results: dict[str, list[float]], wall: float) -> str:
    import lightning
    import timm

    median = {case: statistics.median(values) for case, values in results.items()}
    lines = [
        (
            f"Measured {date.today().isoformat()} on {machine(args)}; torch {torch.__version__}, "
            f"lightning {lightning.__version__}, timm {timm.__version__}, Python {platform.python_version()}."
        ),
        "",
        (
            f"Command: `{' '.join(['python experiments/gpu/bench_throughput.py', *sys.argv[1:]])}` "
            f"(wall time {wall / 60:.1f} min)."
        ),
        "",
        (
            f"{args.backbone}, {args.image_size} px, 12 bands (synthetic data in the reBEN format), batch "
            f"{args.batch_size}, `trainer.precision={args.precision}`, `trainer={args.device}` loader settings, "
            f"channels_last {str(args.channels_last).lower()}, compile {str(args.compile).lower()}; "
            f"{args.steps} batches per epoch, the last of {args.epochs} epochs timed on the {args.clock} clock; "
            f"median of {args.rounds} rounds."
        ),
        "",
        (
            f"| case | {'images per CPU-second' if args.clock == 'cpu' else 'images/s'} | (b) / (a) "
            "| time per image / AN | target |"
        ),
        "|---|---|---|---|---|",
    ]
    for case, value in median.items():
        share = f"{value / median['model']:.2f}" if case == "an" and "model" in median else ""
        ratio = f"{median['an'] / value:.2f}" if "an" in median and case not in ("model", "an") else ""
        target = {"an": ">= 0.80 of (a)", **{k: f"<= {v:.2f} x AN" for k, v in TARGETS.items()}}.get(case, "")
        label = {"model": "(a) model alone", "an": "(b) pipeline, `an`"}.get(case, f"(c) `{case}`")
        lines.append(f"| {label} | {value:.1f} | {share} | {ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    order = ["model", *args.cases]
    results: dict[str, list[float]] = {case: [] for case in order}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for round_ in range(args.rounds):
            shift = round_ % len(order)
            for case in order[shift:] + order[:shift]:
                value = time_model(args, work) if case == "model" else time_pipeline(args, case, work)
                results[case].append(value)
                unit = "images per CPU-second" if args.clock == "cpu" else "images/s"
                print(f"round {round_ + 1}/{args.rounds} {case}: {value:.1f} {unit}", flush=True)
    table = markdown(args, results, time.time() - started)
    print(table)
    if not args.no_write:
        write_generated_block(README, f"throughput-{args.device}", table)
        (HERE / f"throughput_{args.device}.json").write_text(
            json.dumps({"args": vars(args), "images_per_s": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
