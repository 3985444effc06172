"""Calibration benchmark of the embedded synthetic dataset.

Trains the default experiment with full labels (oracle) and with AN on random single positives
for several seeds, evaluates a label-frequency predictor (every image gets the training label
frequencies as scores), and writes the mean and std table into this folder's README.md
(between the BEGIN/END markers) and ``baselines.csv``.

    python experiments/synthetic/run_baselines.py [--seeds 1 2 3] [--overrides key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from splml.io.run_folder import read_results
from splml.runs import is_completed
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
METRICS = ("test/mAP_macro", "test/mAP_micro", "test/F1_macro", "val/mAP_macro_best")
SETTINGS = {
    "full labels (oracle)": ["labels=full", "loss=full"],
    "AN, random single positive": ["labels=random", "loss=an"],
}


def train_once(setting: list[str], seed: int, out_dir: Path, overrides: list[str]) -> dict:
    run_dir = out_dir / f"{'_'.join(s.split('=')[1] for s in setting)}_seed{seed}"
    results = run_dir / "results.json"
    if not (results.is_file() and is_completed(read_results(results))):
        # Completed runs are kept; skip_completed resumes a killed one from its last.ckpt.
        cmd = [sys.executable, "-m", "splml.train", *setting, f"seed={seed}", f"hydra.run.dir={run_dir}",
               "skip_completed=true", *overrides]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(results.read_text())


def label_frequency_baseline(overrides: list[str]) -> dict:
    """Scores = training label frequency per class, the same for every test image."""
    from hydra import compose, initialize_config_dir

    from splml.builders import build_datamodule, config_dir, register_resolvers
    from splml.metrics import compute_metrics

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp", *overrides])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    freq = dm.datasets["train"].targets.mean(0)
    test = dm.datasets["test"].targets
    scores = np.broadcast_to(freq, test.shape).astype(np.float64)
    metrics = compute_metrics(scores, test)
    return {f"test/{k}": v for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench" / "synthetic_baselines")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = parser.parse_args()
    started = time.time()
    rows = []
    for name, setting in SETTINGS.items():
        runs = [train_once(setting, seed, args.out, args.overrides) for seed in args.seeds]
        rows.append((name, runs))
    freq = label_frequency_baseline(args.overrides)
    rows.append(("label-frequency predictor", [freq]))

    table = ["| setting | " + " | ".join(METRICS) + " | runs |", "|---" * (len(METRICS) + 2) + "|"]
    with (HERE / "baselines.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["setting", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "runs"])
        for name, runs in rows:
            cells, flat = [], []
            for metric in METRICS:
                values = np.array([r[metric] for r in runs if r.get(metric) is not None], dtype=float)
                if values.size == 0:
                    cells.append("n/a")
                    flat += ["", ""]
                    continue
                mean, std = values.mean(), values.std(ddof=1) if values.size > 1 else 0.0
                cells.append(f"{mean:.2f} ± {std:.2f}" if values.size > 1 else f"{mean:.2f}")
                flat += [f"{mean:.3f}", f"{std:.3f}"]
            table.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
            writer.writerow([name, *flat, len(runs)])
    command = "python experiments/synthetic/run_baselines.py --seeds " + " ".join(map(str, args.seeds))
    if args.overrides:
        command += " --overrides " + " ".join(args.overrides)
    lines = [f"Command: `{command}` ({(time.time() - started) / 60:.0f} min on this machine, finished runs are reused).",
             "", *table]  # fmt: skip
    write_generated_block(HERE / "README.md", "baselines", "\n".join(lines))
    print("\n".join(table))


if __name__ == "__main__":
    main()
