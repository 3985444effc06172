"""Retrieval comparison on the synthetic dataset: the Hydra sweep, the archive, then the report.

    python experiments/retrieval/run_benchmark.py [--seeds 1 2 3] [--losses supcon macl ...]
        [--macl-variants macl_no_weighting ...] [--labels full random] [--jobs 2] [--report-only]

One sweep of experiment=retrieval_synthetic (ResNet-10t from scratch, 48 px, 8 epochs, two
views per image; 200 test patches query 600 training patches) over the contrastive losses,
label modes and seeds, in logs/bench/retrieval_synthetic, and one of MACL's ablation variants
(``ablation=macl_no_weighting``, ``macl_no_overlap_temperature``, ``macl_fixed_temperature``,
``macl_pair_denominator``, each reported as its own method) in the same folder. Runs are named by their
overrides and ``skip_completed=true`` skips finished ones, so re-running the command only trains
what is missing or failed.

As a reference for what training adds, the same model is also evaluated untrained: one epoch at
learning rate 0 per seed (weights at their random initialisation, batch-norm statistics of the
training data), archived in ``experiments/retrieval/untrained/`` and shown under the table.

Each finished run's ``results.json`` and ``csv/metrics.csv`` are copied to
``experiments/retrieval/runs/`` (and back before a sweep starts: a sweep interrupted on one
machine resumes on another). The report reads the archive and writes
experiments/retrieval/comparison/; its table also goes into experiments/retrieval/README.md,
between the BEGIN/END ``retrieval`` markers.

``--jobs N`` runs N trainings at once (Hydra's joblib launcher), each with cores/N threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from splml.utils.archive import report_archive, run_archived_sweeps, sync_runs
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOSSES = ["supcon", "jaccard_supcon", "mulsupcon", "macl"]
MACL_VARIANTS = ["macl_no_weighting", "macl_no_overlap_temperature", "macl_fixed_temperature", "macl_pair_denominator"]
#: Columns of the table: the first ranks the methods and is plotted.
METRICS = ["test/mAP@100", "test/mAP@all", "test/precision@100", "test/nDCG@100", "test/ACG@100", "test/WAP@100"]


def sweep_command(args: argparse.Namespace, *varied: str) -> list[str]:
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if args.jobs > 1 else []
    return [
        sys.executable, "-m", "splml.train", "-m", "experiment=retrieval_synthetic", "skip_completed=true", *launcher,
        f"hydra.sweep.dir={args.sweep_dir}", "hydra.sweep.subdir=${hydra.job.override_dirname}",
        f"seed={','.join(map(str, args.seeds))}", f"labels={','.join(args.labels)}", *varied, *args.overrides,
    ]  # fmt: skip


def train_untrained_reference(args: argparse.Namespace, env: dict[str, str]) -> None:
    """One lr = 0 epoch per seed (skipped when archived): the untrained network's retrieval metrics."""
    for seed in args.seeds:
        if (args.untrained / f"seed_{seed}" / "results.json").is_file():
            continue
        run_dir = args.sweep_dir.parent / f"{args.sweep_dir.name}_untrained" / f"seed_{seed}"
        cmd = [sys.executable, "-m", "splml.train", "experiment=retrieval_synthetic", "labels=full", "optim.lr=0",
               "trainer.max_epochs=1", "task.module.grid_queries=0", f"seed={seed}", f"hydra.run.dir={run_dir}",
               *args.overrides]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        sync_runs(run_dir.parent, args.untrained)


def untrained_row(folder: Path) -> str:
    """The reference as a row of the report's table (mean ± std over seeds), or "" when none was run."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json"))]
    if not results:
        return ""
    cells = []
    for metric in METRICS:
        values = [r[metric] for r in results]
        cells.append(f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1
                     else f"{values[0]:.2f}")  # fmt: skip
    return f"| synthetic | (none) | untrained (lr = 0) | resnet10t | {' | '.join(cells)} | {len(results)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--losses", nargs="*", default=LOSSES, help="losses of the main sweep (none: skip it)")
    parser.add_argument("--macl-variants", nargs="*", default=MACL_VARIANTS, help="MACL ablation variants (none: skip)")
    parser.add_argument("--labels", nargs="+", default=["full"], help="label modes (random: single positives)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (joblib launcher)")
    parser.add_argument("--sweep-dir", type=Path, default=REPO / "logs" / "bench" / "retrieval_synthetic")
    parser.add_argument("--archive", type=Path, default=HERE / "runs")
    parser.add_argument("--untrained", type=Path, default=HERE / "untrained", help="archive of the reference runs")
    parser.add_argument("--out", type=Path, default=HERE / "comparison", help="folder the report is written to")
    parser.add_argument("--report-only", action="store_true", help="write the report from the archive, train nothing")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    if not args.report_only:
        sweeps = []
        if args.losses:
            sweeps.append(sweep_command(args, f"loss={','.join(args.losses)}"))
        if args.macl_variants:
            sweeps.append(sweep_command(args, "loss=macl", f"ablation={','.join(args.macl_variants)}"))
        run_archived_sweeps(sweeps, args.archive, args.sweep_dir, cwd=REPO, env=env)
        train_untrained_reference(args, env)
    runs = report_archive(args.archive, args.out, "--metrics", *METRICS, cwd=REPO)
    # table.md: the table, then (after a blank line) the failed runs if any; the reference row joins the table.
    table, _, failures = (args.out / "table.md").read_text().strip().partition("\n\n")
    reference = untrained_row(args.untrained)
    source = f"From `{args.archive.resolve().relative_to(REPO)}/` ({runs} runs)"
    if reference:
        table += "\n" + reference
        source += f" and `{args.untrained.resolve().relative_to(REPO)}/`"
    write_generated_block(HERE / "README.md", "retrieval", "\n\n".join(p for p in (table, failures, source + ".") if p))
    print(f"wrote the table into {HERE / 'README.md'} (block retrieval)", flush=True)


if __name__ == "__main__":
    main()
