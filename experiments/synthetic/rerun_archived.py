"""Rerun archived benchmark runs with today's code and compare their test scores with the archive.

    python experiments/synthetic/rerun_archived.py RUN [RUN ...] [--out logs/bench/rerun]
        [--reference DIR] [--metric test/mAP_macro] [--write-readme]

Each RUN is the name of a folder of ``experiments/synthetic/runs/`` (e.g.
``labels=random,loss=en_scl,seed=1``); it is trained again with the overrides recorded in its
``.hydra/overrides.yaml`` (``skip_completed`` left out), one thread, into ``<out>/<RUN>``. A rerun
whose results.json exists is reused, so the command resumes. ``--reference DIR`` adds a column
with the same runs made by another checkout into DIR (``--out`` of that checkout's rerun): two
versions of the code compared on one machine, which is the test that a change keeps every number.

Why a second column: a run reproduces bit for bit on the same machine and library versions, but
not across CPUs (vectorised convolution kernels sum in another order, and 8 epochs of training
amplify the last bits into tenths of a point). The table prints both differences.
``--write-readme`` puts the table into ``experiments/synthetic/README.md`` between the
``reproduction`` markers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from splml.io.run_folder import RESULTS_FILE, read_results
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCHIVE = HERE / "runs"
#: Recorded overrides that describe how the sweep ran, not what the run is.
NOT_RUN_DEFINING = ("skip_completed=", "hydra/launcher=", "hydra.launcher.")


def recorded_overrides(run: str) -> list[str]:
    """The overrides an archived run was trained with, without the sweep's own settings."""
    path = ARCHIVE / run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the archived run {run!r} has no recorded overrides")
    return [o for o in yaml.safe_load(path.read_text()) if not o.startswith(NOT_RUN_DEFINING)]


def rerun(run: str, out: Path) -> Path:
    """Train ``run`` again into ``out/run`` (reused when it has a results.json); returns the folder."""
    target = out / run
    if (target / RESULTS_FILE).is_file():
        return target
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "splml.train", *recorded_overrides(run), f"hydra.run.dir={target}"]
    print("+", " ".join(cmd), flush=True)
    target.mkdir(parents=True, exist_ok=True)
    with (out / f"{run}.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return target


def score(folder: Path, metric: str) -> float:
    results = read_results(folder / RESULTS_FILE)
    if results is None or metric not in results:
        raise KeyError(f"{folder / RESULTS_FILE}: no {metric!r}")
    return float(results[metric])


def table(runs: list[str], out: Path, reference: Path | None, metric: str) -> str:
    head = ["run", "rerun", "archive", "rerun - archive"]
    if reference is not None:
        head += [f"reference ({reference.name})", "rerun - reference"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for run in runs:
        new, old = score(out / run, metric), score(ARCHIVE / run, metric)
        cells = [f"`{run}`", f"{new:.6f}", f"{old:.6f}", f"{new - old:+.2e}"]
        if reference is not None:
            ref = score(reference / run, metric)
            cells += [f"{ref:.6f}", f"{new - ref:+.2e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="folder names under experiments/synthetic/runs/")
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench" / "rerun")
    parser.add_argument("--reference", type=Path, default=None, help="the same runs made by another checkout")
    parser.add_argument("--metric", default="test/mAP_macro")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    for run in args.runs:
        rerun(run, args.out)
    body = table(args.runs, args.out, args.reference, args.metric)
    print(body)
    if args.write_readme:
        write_generated_block(HERE / "README.md", "reproduction", f"`{args.metric}`:\n\n{body}")


if __name__ == "__main__":
    main()
