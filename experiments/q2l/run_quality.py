"""Query2Label head vs the linear head on the synthetic dataset: the sweeps, the archive, the report.

    python experiments/q2l/run_quality.py [--image-size 64] [--seeds 1 2 3] [--jobs 1] [--report-only]
        [--variant NAME --overrides KEY=VALUE ...]

Two settings, each with ``head=linear,q2l`` and every seed, on ``experiment=synthetic_methods``
(resnet10t, Adam 1e-3, cosine, 8 epochs, batch 32) at ``--image-size`` (64 px gives the
backbone a 2 x 2 feature map, 120 px a 4 x 4 one):

* single positives: ``labels=random loss=an``;
* full labels: ``labels=full loss=full``.

The head is ``conf/head/q2l.yaml`` as it stands (width 256 after the input projection,
feed-forward 1024, 1 encoder + 2 decoder layers, 4 heads, dropout 0.1). Runs are named by their
overrides and ``skip_completed=true`` skips finished ones, so re-running only trains what is
missing. Finished runs' ``results.json`` and ``csv/metrics.csv`` are archived in
``experiments/q2l/runs_<size>px/`` (``splml.utils.archive``, as every benchmark);
the report (``python -m splml.report``, where a head other than the linear one is its own method,
``an+q2l``) goes to ``experiments/q2l/report_<size>px/`` and its table into
``experiments/q2l/README.md`` between the ``quality_<size>px`` markers.

Each training uses one thread (``OMP_NUM_THREADS=1`` unless set): on the shared 2-core machine a
two-thread run was about ten times slower in wall time than a one-thread run once other jobs
loaded the cores, as the threads waited on each other.

``--variant NAME`` with ``--overrides`` runs both heads under a changed recipe (for instance
``--variant head_lr0.1 --overrides optim.head_lr_mult=0.1``) into its own sweep folder, archive
(``runs_<size>px_<NAME>/``), report and README block (``quality_<size>px_<NAME>``), because the
report does not tell runs apart by optimiser settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from splml.utils.archive import report_archive, run_archived_sweeps
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
README = HERE / "README.md"
#: (labels, loss) of the two settings.
SETTINGS = (("random", "an"), ("full", "full"))


def sweep_command(args: argparse.Namespace, labels: str, loss: str) -> list[str]:
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if args.jobs > 1 else []
    return [
        sys.executable, "-m", "splml.train", "-m", "experiment=synthetic_methods", "skip_completed=true", *launcher,
        f"hydra.sweep.dir={args.sweep_dir}", "hydra.sweep.subdir=${hydra.job.override_dirname}",
        f"dataset.datamodule.image_size={args.image_size}",
        f"seed={','.join(map(str, args.seeds))}", f"labels={labels}", f"loss={loss}", "head=linear,q2l",
        *args.overrides,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (joblib launcher)")
    parser.add_argument("--sweep-dir", type=Path, default=None, help="default: logs/bench/q2l_<size>px")
    parser.add_argument("--report-only", action="store_true", help="write the report from the archive, train nothing")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--variant", default=None, help="name of a recipe changed by --overrides (own archive)")
    args = parser.parse_args()
    if args.overrides and not args.variant:
        parser.error("--overrides changes the recipe: name it with --variant so its runs get their own archive")
    tag = f"{args.image_size}px" + (f"_{args.variant}" if args.variant else "")
    args.sweep_dir = args.sweep_dir or REPO / "logs" / "bench" / f"q2l_{tag}"
    archive, report_dir = HERE / f"runs_{tag}", HERE / f"report_{tag}"

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    if not args.report_only:
        sweeps = [sweep_command(args, labels, loss) for labels, loss in SETTINGS]
        run_archived_sweeps(sweeps, archive, args.sweep_dir, cwd=REPO, env=env)
    runs = report_archive(archive, report_dir, cwd=REPO)
    table = (report_dir / "table.md").read_text()  # with the list of failed runs, if any
    changed = f", {' '.join(args.overrides)}" if args.overrides else f", variant {args.variant}" if args.variant else ""
    source = f"`{archive.relative_to(REPO)}/` ({runs} runs, {args.image_size} px{changed})"
    write_generated_block(README, f"quality_{tag}", f"{table.strip()}\n\nFrom {source}.")
    print(f"wrote the table into {README} (block quality_{tag})", flush=True)


if __name__ == "__main__":
    main()
