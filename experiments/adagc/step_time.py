"""What AdaGC's training costs against AN's, the rollback included, on the synthetic ablation setting.

    python experiments/adagc/step_time.py [--rounds 2] [--train-samples 320] [--epochs 4] [--no-write]

Both methods train with ``python -m splml.train``'s own code path (``splml.train.train``) in this
process, on ``experiment=adagc_ablation``'s data, model, optimiser and batch size (AN through
``experiment=synthetic_methods loss=an``, the same setting), on a subset of ``--train-samples``
training images for ``--epochs`` nominal epochs. AdaGC's rollback is made to happen at a known
place: ``loss.trigger=fixed``, warm-up of ``epochs - 1`` epochs, then back to the state after
epoch ``epochs // 4`` (with 4 epochs: 3 warm-up epochs, back to epoch 1, 2 undone; the run trains
6 epochs, the proportion the detection undid in the 8-epoch random-label run of seed 1). A third
run, ``adagc_no_rollback``, starts the corrections at the same epoch without warm-up beyond it,
snapshots or rollback: the difference to it is the rollback's cost.

Timed by a callback: the fit (``on_fit_start`` .. ``on_fit_end``) minus the validation inside it
(``on_validation_start`` .. ``on_validation_end``), so the training time holds every training
step, the teachers' updates and predictions, the rollback snapshots (written after each warm-up
epoch), the restore, and the checkpoints (the same for both). The methods run interleaved, the
order alternating per round, so load drift on a shared machine hits them alike. Reported per
method: median training seconds, optimizer steps, median ms per step, and the ratios to AN

- per optimizer step (AdaGC's extra work per step, snapshots and restore amortised over its steps),
- per run of the same nominal length (the per-step ratio times the epochs the rollback adds).

Writes a Markdown table into ``README.md`` next to this file (block ``adagc_step_time``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from splml.train import train
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: AN; AdaGC with the rollback; AdaGC with corrections from the same epoch but no rollback (and no
#: snapshots), which separates the per-step work of teachers, GC and Mixup from the rollback's cost.
METHODS = ("an", "adagc", "adagc_no_rollback")


class TrainingTimer:
    """Callback (built by Hydra): training seconds = fit minus in-fit validation; optimizer steps run."""

    #: The last run's measurement (one run at a time in this process).
    last: ClassVar[dict[str, float]] = {}

    def __new__(cls):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.fit_started = self.validation_started = 0.0
                self.validation_s = 0.0

            def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                self.fit_started = time.perf_counter()

            def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                self.validation_started = time.perf_counter()

            def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                self.validation_s += time.perf_counter() - self.validation_started

            def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                fit_s = time.perf_counter() - self.fit_started
                TrainingTimer.last = {
                    "train_s": fit_s - self.validation_s,
                    "steps": float(trainer.global_step),
                    "epochs": float(trainer.current_epoch),
                }

        return _Timer()


def overrides_for(method: str, args: argparse.Namespace) -> list[str]:
    common = [
        f"dataset.datamodule.max_samples.train={args.train_samples}", f"trainer.max_epochs={args.epochs}",
        "seed=1", "labels=random", "+callbacks.training_timer._target_=__main__.TrainingTimer",
    ]  # fmt: skip
    if method == "an":
        return ["experiment=synthetic_methods", "loss=an", *common]
    trigger = max(1, args.epochs // 4)
    adagc = ["experiment=adagc_ablation", "loss.trigger=fixed", f"loss.fixed_epoch={trigger}", *common]
    if method == "adagc_no_rollback":
        return adagc
    return [*adagc, f"loss.fixed_decided_at={args.epochs - 1}"]


def time_run(method: str, args: argparse.Namespace, workdir: Path, index: int) -> dict[str, float]:
    run_dir = workdir / f"{method}_{index}"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides_for(method, args), f"paths.cache_dir={REPO / '.cache'}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    TrainingTimer.last = {}
    result: dict[str, Any] = train(cfg)
    if result.get("status") not in (None, "completed") or not TrainingTimer.last:
        raise RuntimeError(f"the {method} timing run in {run_dir} did not complete: {result.get('status')}")
    measured = dict(TrainingTimer.last)
    measured["epochs_run"] = float(result["epochs_run"])
    print(f"{method} #{index}: {measured}", flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (a warm-up of epochs - 1 epochs that rolls back)")

    runs: dict[str, list[dict[str, float]]] = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory(prefix="adagc_step_time_") as tmp:
        for round_ in range(args.rounds):
            order = METHODS if round_ % 2 == 0 else METHODS[::-1]
            for method in order:
                runs[method].append(time_run(method, args, Path(tmp), round_))

    def median(method: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[method])

    per_step = {m: 1000 * statistics.median(r["train_s"] / r["steps"] for r in runs[m]) for m in runs}
    header = (
        f"| method | epochs run (nominal {args.epochs}) | optimizer steps | training s (median) | "
        "ms / step (median) | ratio to AN per step | ratio to AN per run |"
    )
    lines = [
        header,
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in runs:
        lines.append(
            f"| {method} | {median(method, 'epochs_run'):.0f} | {median(method, 'steps'):.0f} | "
            f"{median(method, 'train_s'):.1f} | {per_step[method]:.0f} | {per_step[method] / per_step['an']:.2f} | "
            f"{median(method, 'train_s') / median('an', 'train_s'):.2f} |"
        )
    machine = f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    body = (
        f"Training time of AN, AdaGC (rollback after {args.epochs - 1} warm-up epochs to epoch "
        f"{max(1, args.epochs // 4)}) and AdaGC without the rollback (corrections from epoch "
        f"{max(1, args.epochs // 4)}), {args.train_samples} training images, {args.rounds} interleaved "
        f"rounds; {machine}:\n\n" + "\n".join(lines) + "\n\n"
        "From `python experiments/adagc/step_time.py` (training = fit minus the validation inside it)."
    )
    print(body)
    if not args.no_write:
        write_generated_block(HERE / "README.md", "adagc_step_time", body)


if __name__ == "__main__":
    main()
