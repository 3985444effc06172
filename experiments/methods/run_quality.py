"""Method comparison on the synthetic dataset: the Hydra sweeps, the archive, then the report.

    python experiments/methods/run_quality.py [--seeds 1 2 3] [--losses an en ...] [--labels random dominant]
        [--adagc-variants none adagc_no_mixup ...] [--jobs 2]

Two sweeps share one folder (logs/bench/synthetic_methods): every loss of the comparison set
(experiment=synthetic_methods) and AdaGC with its ablation variants (experiment=adagc_ablation,
the same data, model, optimiser and length). Runs are named by their overrides and
``skip_completed=true`` skips finished ones, so re-running the command only trains what is
missing or failed.

Each finished run's ``results.json`` and ``csv/metrics.csv`` (a few kB; no checkpoints) are
copied to ``experiments/synthetic/runs/`` and copied back before a sweep starts: the measured
table lives in the repository, and a sweep interrupted on one machine resumes on another. The
report reads the archive and writes experiments/synthetic/comparison/; its papers' layout
(table_wide.md) also goes into experiments/synthetic/README.md, between the BEGIN/END
comparison markers.

``--jobs N`` runs N trainings at once (Hydra's joblib launcher), each with cores/N threads: on a
2-core CPU two single-thread runs finish about 1.3x faster in total than one two-thread run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from splml.methods.registry import loss_names, method
from splml.utils.archive import report_archive, run_archived_sweeps
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCHIVE = REPO / "experiments" / "synthetic" / "runs"
REPORT = REPO / "experiments" / "synthetic" / "comparison"
SYNTHETIC_README = REPO / "experiments" / "synthetic" / "README.md"
#: The methods registered for the comparison (``register_method(..., comparison=True)``).
ALL_LOSSES = loss_names(comparison=True)
ADAGC_VARIANTS = ["none", *method("adagc").ablations]


def sweep_command(args: argparse.Namespace, experiment: str, varied: str, *extra: str) -> list[str]:
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if args.jobs > 1 else []
    return [
        sys.executable, "-m", "splml.train", "-m", f"experiment={experiment}", "skip_completed=true", *launcher,
        f"hydra.sweep.dir={args.sweep_dir}", "hydra.sweep.subdir=${hydra.job.override_dirname}",
        # Seeds vary slowest, so a sweep cut short still has every method at the first seeds.
        f"seed={','.join(map(str, args.seeds))}", f"labels={','.join(args.labels)}", varied, *args.overrides, *extra,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--losses", nargs="*", default=ALL_LOSSES, help="losses of the methods sweep (none: skip it)")
    parser.add_argument(
        "--adagc-variants",
        nargs="*",
        default=ADAGC_VARIANTS,
        help="ablation=... values of the AdaGC sweep (none: skip it)",
    )
    parser.add_argument("--labels", nargs="+", default=["random", "dominant"])
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (joblib launcher)")
    parser.add_argument("--sweep-dir", type=Path, default=REPO / "logs" / "bench" / "synthetic_methods")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--report-only", action="store_true", help="write the report from the archive, train nothing")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--adagc-overrides", nargs="*", default=[], help="extra Hydra overrides for the AdaGC sweep")
    parser.add_argument("--out", type=Path, default=REPORT, help="folder the report is written to")
    parser.add_argument(
        "--readme-block",
        default="comparison",
        help="name of the BEGIN/END block of experiments/synthetic/README.md that gets the wide table",
    )
    args = parser.parse_args()

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    if not args.report_only:
        sweeps = []
        if args.losses:
            sweeps.append(sweep_command(args, "synthetic_methods", f"loss={','.join(args.losses)}"))
        if args.adagc_variants:
            variants = f"ablation={','.join(args.adagc_variants)}"
            sweeps.append(sweep_command(args, "adagc_ablation", variants, *args.adagc_overrides))
        run_archived_sweeps(sweeps, args.archive, args.sweep_dir, cwd=REPO, env=env)
    runs = report_archive(args.archive, args.out, cwd=REPO)
    table = (args.out / "table_wide.md").read_text()
    source = f"`{args.archive.resolve().relative_to(REPO)}/` ({runs} runs)"
    write_generated_block(SYNTHETIC_README, args.readme_block, f"{table}\nFrom {source}.")
    print(f"wrote the table into {SYNTHETIC_README} (block {args.readme_block})", flush=True)


if __name__ == "__main__":
    main()
