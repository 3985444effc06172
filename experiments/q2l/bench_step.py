"""What the Query2Label head costs per training step, relative to the linear head.

For each (backbone, image size) setting: one timm backbone (same initial weights for every head),
one fixed batch shaped like the synthetic datamodule's (12 bands, 19 classes, one observed
positive per image), the AN loss from ``conf/loss/an.yaml`` and an Adam optimiser. Heads, built
from the real configs:

* ``linear``: ``conf/head/linear.yaml``;
* ``q2l``: ``conf/head/q2l.yaml`` (width 256 after a 1x1 projection, feed-forward 1024);
* ``q2l_paper``: the head of ``experiment=q2l_coco`` (width 2048, feed-forward 8192), with the
  input projection on because these backbones' features are narrower than 2048.

A timed step is forward + loss + backward + ``optimizer.step()``; heads are interleaved
round-robin (the order rotates every round) so that load drift on a shared machine hits them
alike. Reported: parameters (head, total), median wall and CPU (``time.process_time``, all
threads) milliseconds per step with the interquartile range, and the ratio of medians to the
linear head. Writes a Markdown table into ``README.md`` (between the ``step_cost`` markers) and
``step_cost.csv`` next to this file::

    python experiments/q2l/bench_step.py [--settings resnet10t:64 resnet18:120] [--heads linear q2l q2l_paper]
        [--batch-size 32] [--steps 5] [--rounds 3] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

# Idle OpenMP workers sleep instead of spinning, so CPU time counts work done (as in
# experiments/methods/bench_machinery.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splml.builders import config_dir, register_resolvers
from splml.methods.base import LossContext
from splml.models.backbone import create_backbone
from splml.models.model import SPMLModel
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
CSV_PATH = HERE / "step_cost.csv"
BASELINE = "linear"
HEADS = ("linear", "q2l", "q2l_paper")


def head_config(name: str) -> dict:
    """The head's config node as a run would compose it (without ``in_features``/``num_classes``)."""
    conf = config_dir()
    if name == "q2l_paper":
        node = OmegaConf.merge(
            OmegaConf.load(conf / "head" / "q2l.yaml"),
            OmegaConf.load(conf / "experiment" / "q2l_coco.yaml").head,
            {"input_proj": True},
        )
    else:
        node = OmegaConf.load(conf / "head" / f"{name}.yaml")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def build(head: str, backbone_name: str, channels: int, num_classes: int, seed: int) -> SPMLModel:
    torch.manual_seed(seed)
    backbone = create_backbone(backbone_name, in_chans=channels)
    torch.manual_seed(seed + 1)
    return SPMLModel(
        backbone, instantiate(head_config(head), in_features=backbone.num_features, num_classes=num_classes)
    )


def make_batch(batch_size: int, channels: int, size: int, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = (torch.rand(batch_size, num_classes, generator=gen) < 0.15).float()
    first = torch.randint(0, num_classes, (batch_size,), generator=gen)
    target[torch.arange(batch_size), first] = 1.0
    observed = torch.zeros_like(target)
    observed[torch.arange(batch_size), first] = 1.0
    return {
        "image": torch.randn(batch_size, channels, size, size, generator=gen),
        "observed": observed,
        "target": target,
    }


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def time_setting(args: argparse.Namespace, backbone: str, size: int) -> list[dict]:
    loss = instantiate(OmegaConf.load(config_dir() / "loss" / "an.yaml"))
    batch = make_batch(args.batch_size, args.channels, size, args.num_classes, args.seed)
    runs = {}
    for head in args.heads:
        model = build(head, backbone, args.channels, args.num_classes, args.seed).train()
        runs[head] = {
            "model": model,
            "opt": torch.optim.Adam(model.parameters(), lr=1e-4),
            "wall": [],
            "cpu": [],
            "grid": int(model(batch["image"][:1])["maps"].shape[-1]),
        }

    def step(head: str) -> tuple[float, float]:
        run = runs[head]
        wall, cpu = time.perf_counter(), time.process_time()
        run["opt"].zero_grad(set_to_none=True)
        value = loss(run["model"](batch["image"]), batch, LossContext())
        value.backward()
        run["opt"].step()
        return time.perf_counter() - wall, time.process_time() - cpu

    for head in args.heads:  # warm-up: allocations, Adam state
        for _ in range(args.warmup):
            step(head)
    order = list(args.heads)
    for r in range(args.rounds):
        for _ in range(args.steps):
            for head in order:
                wall, cpu = step(head)
                runs[head]["wall"].append(wall)
                runs[head]["cpu"].append(cpu)
        order = order[1:] + order[:1]
        print(f"  {backbone} {size}px round {r + 1}/{args.rounds} done", flush=True)

    base_wall, base_cpu = (statistics.median(runs[BASELINE][k]) for k in ("wall", "cpu"))
    rows = []
    for head, run in runs.items():
        wq, cq = quartiles(run["wall"]), quartiles(run["cpu"])
        rows.append({
            "backbone": backbone, "image_size": size, "grid": run["grid"], "head": head,
            "head_params": count(run["model"].head), "total_params": count(run["model"]),
            "wall_ms": 1e3 * wq[1], "wall_q1": 1e3 * wq[0], "wall_q3": 1e3 * wq[2],
            "cpu_ms": 1e3 * cq[1], "cpu_q1": 1e3 * cq[0], "cpu_q3": 1e3 * cq[2],
            "wall_ratio": wq[1] / base_wall, "cpu_ratio": cq[1] / base_cpu, "steps": len(run["wall"]),
        })  # fmt: skip
    return rows


def markdown(args: argparse.Namespace, rows: list[dict], seconds: float) -> str:
    cpu = platform.processor() or platform.machine()
    command = " ".join(["python experiments/q2l/bench_step.py", *args.argv])
    machine = (
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"`torch.set_num_threads({args.threads})`, load average at the start {os.getloadavg()[0]:.1f} "
        "(the machine is shared: absolute times drift, ratios within one setting are what to read)."
    )
    protocol = (
        f"Batch {args.batch_size} x {args.channels} bands, L = {args.num_classes}, AN loss, Adam; "
        f"median of {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up step(s) per head; "
        "a step = forward + loss + backward + optimiser step."
    )
    header = (
        "| backbone | input | G | head | head params | total params | wall ms/step (IQR) | wall ratio "
        "| CPU ms/step (IQR) | CPU ratio |"
    )
    lines = [
        machine, "", f"Command: `{command}` (wall time {seconds / 60:.1f} min).", "", protocol, "",
        header, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['image_size']} px | {r['grid']} | `{r['head']}` | {r['head_params']:,} | "
            f"{r['total_params']:,} | {r['wall_ms']:.0f} ({r['wall_q1']:.0f}-{r['wall_q3']:.0f}) | "
            f"{r['wall_ratio']:.2f} | {r['cpu_ms']:.0f} ({r['cpu_q1']:.0f}-{r['cpu_q3']:.0f}) | {r['cpu_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["resnet10t:64", "resnet18:120"], help="backbone:image_size")
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--steps", type=int, default=5, help="timed steps per head and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave README.md and step_cost.csv alone")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if BASELINE not in args.heads:
        args.heads = [BASELINE, *args.heads]
    register_resolvers()
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = []
    for setting in args.settings:
        backbone, _, size = setting.partition(":")
        if not size.isdigit():
            p.error(f"--settings: {setting!r} is not backbone:image_size")
        rows += time_setting(args, backbone, int(size))
    block = markdown(args, rows, time.time() - started)
    print(block)
    if not args.no_write:
        write_generated_block(README, "step_cost", block)
        with open(CSV_PATH, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {README} and {CSV_PATH}")


if __name__ == "__main__":
    main()
