"""How long each command takes to answer ``--help``, and what that used to wait for.

Each command runs ``--help`` in a fresh process (``python -m splml.<command> --help``: the console
scripts ``splml-<command>`` call the same function), ``--repeats`` times, interleaved; reported are
the median and the fastest wall time and the median CPU time of the process (user + system),
beside the time to import Lightning alone (what ``--help`` waited for before the commands imported
their heavy dependencies lazily). The load average of the machine is recorded with the table,
since wall times on a shared machine include waiting for a core. Writes the table into
``README.md`` (between the ``help_time`` markers)::

    python experiments/cli/bench_help.py [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
COMMANDS = {
    "splml-train": ["-m", "splml.train", "--help"],
    "splml-eval": ["-m", "splml.eval", "--help"],
    "splml-predict": ["-m", "splml.predict", "--help"],
    "splml-export": ["-m", "splml.export", "--help"],
    "splml-annotate": ["-m", "splml.annotate", "--help"],
    "splml-report": ["-m", "splml.report", "--help"],
    "(import lightning)": ["-c", "import lightning"],
}


def timed(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python <args>`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            samples[name].append(timed(command))
    load_after = os.getloadavg()[0]
    lines = [
        "| command | `--help` wall, median (s) | fastest (s) | CPU, median (s) |",
        "|---|---|---|---|",
    ]
    for name, runs in samples.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        lines.append(
            f"| `{name}` | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} |"
        )
    cpu = platform.processor() or platform.machine()
    lines += [
        "",
        (
            f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({cpu}), Python "
            f"{platform.python_version()}, {args.repeats} runs each (interleaved), load average {load_before:.1f} before "
            f"and {load_after:.1f} after (the machine was shared: the wall time includes waiting for a core; the CPU "
            "time is the work). `(import lightning)` is what every `--help` waited for before the commands imported "
            "torch and Lightning only once Hydra had parsed the command line."
        ),
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_generated_block(README, "help_time", block, heading="## Measured")
        print(f"\nwrote {README}")


if __name__ == "__main__":
    main()
