"""AdaGC's synthetic ablation against AN, LL-R and EM+APL, with what each AdaGC run decided.

    python experiments/adagc/summarize_runs.py [--archive experiments/synthetic/runs] [--no-write]

Reads the archived runs of the synthetic comparison (``experiments/methods/run_quality.py``) and
writes two tables into ``experiments/adagc/README.md`` (block ``adagc_synthetic``):

1. test macro mAP per method and label mode, mean ± std over the seeds that *every* listed
   method has (so AdaGC and the baselines are compared on the same seeds; the seeds are named);
2. per AdaGC run: the epochs run, when the warm-up ended (``adagc/decided_at``), the trigger epoch
   it rolled back to, the transition's ``mid``/``dep``, the best epoch (and whether it lies in the
   corrected stage), the warm-up teacher's recall of the hidden positives at the trigger and the
   corrections' precision/recall in the last epoch (``diag/*``), and the test macro mAP.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from splml.io.run_folder import read_epoch_metrics, read_results
from splml.methods.registry import method as registered_method
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCHIVE = REPO / "experiments" / "synthetic" / "runs"
BASELINES = ("an", "ll_r", "em_apl")
COLUMNS = (
    "adagc/decided_at", "adagc/trigger_epoch", "adagc/mid", "adagc/dep", "adagc/epochs_rolled_back",
    "diag/teacher_recall", "diag/teacher_precision", "diag/extra_positive_precision", "diag/extra_positive_recall",
    "val/mAP_macro",
)  # fmt: skip


def method_of(result: dict[str, Any]) -> str:
    """``adagc`` / ``adagc_<variant>`` for AdaGC runs (by their ablation), else the loss name."""
    choices = result.get("choices") or {}
    loss, ablation = choices.get("loss"), choices.get("ablation")
    if loss == "adagc":
        return "adagc" if ablation in (None, "none") else str(ablation)
    return str(loss)


def load(archive: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(archive.glob("*/results.json")):
        result = read_results(path)
        if not result or result.get("status") != "completed":
            continue
        method = method_of(result)
        if method not in BASELINES and not method.startswith("adagc"):
            continue
        row: dict[str, Any] = {
            "method": method, "labels": (result.get("choices") or {}).get("labels"), "seed": result["seed"],
            "mAP": result["test/mAP_macro"], "best_epoch": result.get("best_epoch"),
            "epochs_run": result.get("epochs_run"), "run": path.parent.name,
        }  # fmt: skip
        if method.startswith("adagc"):
            curves = read_epoch_metrics(path.parent, COLUMNS)
            for column in COLUMNS:
                values = curves[column]
                row[column] = values[max(values)] if values else None
            decided = row["adagc/decided_at"]
            recall = curves["diag/teacher_recall"]
            # The warm-up teacher at the state rolled back to (logged at the start of the epoch after it).
            trigger = row["adagc/trigger_epoch"]
            row["teacher_recall_at_trigger"] = None if trigger is None else recall.get(int(trigger) - 1)
            row["best_in_corrected_stage"] = None if decided is None else result.get("best_epoch", -1) >= decided
            # Best validation mAP before the decision (epochs the rollback may have undone) and after it.
            val = curves["val/mAP_macro"]
            cut = len(val) if decided is None else int(decided)
            row["val_warmup"] = max((v for e, v in val.items() if e < cut), default=None)
            row["val_corrected"] = max((v for e, v in val.items() if e >= cut), default=None)
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> str:
    """``mean ± std`` (sample std) over several seeds, the value alone for one seed."""
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std():.2f}"


def _seeds(group: pd.DataFrame, methods: list[str]) -> list[int]:
    """The seeds every one of ``methods`` has a completed run for."""
    return sorted(set.intersection(*(set(group[group.method == m].seed) for m in methods)))


def comparison_table(runs: pd.DataFrame) -> str:
    """AdaGC against the baselines on the seeds all of them have (one row per label mode)."""
    compared = [*BASELINES, "adagc"]
    lines = ["| labels | seeds | " + " | ".join(compared) + " |", "|" + "---|" * (len(compared) + 2)]
    for labels, group in runs.groupby("labels"):
        seeds = _seeds(group, compared)
        if not seeds:
            have = {m: sorted(group[group.method == m].seed) for m in compared}
            lines.append(f"| {labels} | none in common ({have}) |" + " |" * len(compared))
            continue
        cells = [_mean_std(group[(group.method == m) & group.seed.isin(seeds)].mAP) for m in compared]
        lines.append(f"| {labels} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(runs: pd.DataFrame, variants: list[str]) -> str:
    """Each variant against AdaGC and AN on the seeds all three have; variants without runs are named."""
    lines = [
        "| labels | variant | seeds | variant | AdaGC | AN | variant - AdaGC |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    missing = []
    for labels in sorted(set(runs.labels)):
        group = runs[runs.labels == labels]
        for variant in variants:
            seeds = _seeds(group, [variant, "adagc", "an"])
            if not seeds:
                missing.append(f"{variant} ({labels})")
                continue
            values = {m: group[(group.method == m) & group.seed.isin(seeds)].set_index("seed").mAP.sort_index()
                      for m in (variant, "adagc", "an")}  # fmt: skip
            lines.append(
                f"| {labels} | {variant} | {','.join(map(str, seeds))} | {_mean_std(values[variant])} | "
                f"{_mean_std(values['adagc'])} | {_mean_std(values['an'])} | "
                f"{_mean_std(values[variant] - values['adagc'])} |"
            )
    text = "\n".join(lines)
    if missing:
        text += "\n\nNot run (no completed run on a seed that AdaGC and AN also have): " + ", ".join(missing) + "."
    return text


def decisions_table(runs: pd.DataFrame) -> str:
    adagc = runs[runs.method.str.startswith("adagc")].sort_values(["method", "labels", "seed"])

    def fmt(value: Any, digits: int = 0) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    lines = [
        "| method | labels | seed | epochs run | decided after | trigger | mid / dep | best epoch | best val mAP before / after the decision | teacher recall at trigger (%) | corrections prec / rec, last epoch (%) | test mAP |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for _, r in adagc.iterrows():
        best = f"{r.best_epoch}" + (" (corrected)" if r.best_in_corrected_stage else " (warm-up)")
        if r["adagc/decided_at"] is None or pd.isna(r["adagc/decided_at"]):
            best = f"{r.best_epoch}"
        lines.append(
            f"| {r.method} | {r.labels} | {r.seed} | {r.epochs_run} | {fmt(r['adagc/decided_at'])} | "
            f"{fmt(r['adagc/trigger_epoch'])} | {fmt(r['adagc/mid'])} / {fmt(r['adagc/dep'])} | {best} | "
            f"{fmt(r.val_warmup, 2)} / {fmt(r.val_corrected, 2)} | "
            f"{fmt(r.teacher_recall_at_trigger, 1)} | {fmt(r['diag/extra_positive_precision'], 1)} / "
            f"{fmt(r['diag/extra_positive_recall'], 1)} | {r.mAP:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    runs = load(args.archive)
    if runs.empty or "adagc" not in set(runs.method):
        raise SystemExit(f"{args.archive}: no completed AdaGC run (loss=adagc ablation=none) to summarise")
    variants = [str(v) for v in registered_method("adagc").ablations]
    body = (
        "Test macro mAP (%), mean ± sample std over the seeds named (a single value for one seed).\n\n"
        f"AdaGC against AN, LL-R and EM+APL, on the seeds all four have:\n\n{comparison_table(runs)}\n\n"
        f"The ablation, each variant on the seeds it, AdaGC and AN have:\n\n{ablation_table(runs, variants)}\n\n"
        f"What each AdaGC run decided:\n\n{decisions_table(runs)}\n\n"
        f"From `{args.archive.resolve().relative_to(REPO)}/` (`python experiments/adagc/summarize_runs.py`)."
    )
    print(body)
    if not args.no_write:
        write_generated_block(HERE / "README.md", "adagc_synthetic", body)


if __name__ == "__main__":
    main()
