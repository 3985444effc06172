"""Turn finished runs into comparison tables: ``python -m splml.report <dir or glob> [...]``.

Reads every ``results.json`` below the given folders (not W&B, so it works offline), groups
runs by dataset, label mode, method (the loss or its ablation variant, with ``+<head>`` for a
head other than the linear one), backbone and every other override of the job except the
seed (so an lr sweep gives one row per lr, named ``an [optim.lr=0.01]``), and writes the mean and
standard deviation over seeds as Markdown and CSV. Failed runs (``status: failed``), groups with
fewer seeds than the others and seeds counted twice in a group are shown as such, never averaged
away silently.

With ``--out`` it also writes what goes into a paper or a review without re-plotting by hand: a
LaTeX table (``table.tex``), the papers' layout of the first metric (``table_wide.md``/``.tex``:
methods as rows, one column per dataset and label mode), a per-class AP table per (dataset,
labels) block, and PNG figures (method means with std error bars and every seed, per-class AP
heat map, validation curves of the metric the best checkpoint was chosen on, and the extra-positive precision/recall curves of the methods
that log them). Curves come from each
run's ``csv/metrics.csv``; a run without it is simply left out of the curves.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from splml.io.run_folder import RESULTS_FILE, load_results, read_epoch_metrics
from splml.runs import is_completed, override_key, recorded_overrides
from splml.utils.naming import method_name
from splml.utils.plotting import plot_curves, plot_heat_map, plot_means_with_seeds, save_figure

log = logging.getLogger(__name__)

#: Columns for runs whose results.json predates ``summary_metrics`` (classification runs).
DEFAULT_METRICS = ("test/mAP_macro", "test/mAP_micro", "test/F1_macro")
#: Curve column for runs whose results.json predates ``best_metric``.
DEFAULT_SELECTION_METRIC = "val/mAP_macro"
GROUP_KEYS = ("dataset", "labels", "loss", "backbone")


@dataclass
class RunGroup:
    """Runs sharing dataset, labels, method, backbone and setting: they differ only by their seed.

    The method is the ablation name if set, else the loss (``+<head>`` with a head other than the
    linear one), followed by the overrides that set
    this group apart from the method's other settings (``an [optim.lr=0.01]``), if it has any.
    """

    key: tuple[str, ...]
    results: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Folder of each completed run, parallel to ``results``: the curves read its csv/metrics.csv.
    run_dirs: list[Path] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.results if r.get(metric) is not None]

    def summary(self, metric: str) -> tuple[float, float, int]:
        vals = self.values(metric)
        if not vals:
            return math.nan, math.nan, 0
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return statistics.fmean(vals), std, len(vals)


def find_results(paths: Sequence[str]) -> list[Path]:
    """Every results.json under the given folders or globs (sorted, without duplicates)."""
    found: set[Path] = set()
    for pattern in paths:
        matches = [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]
        for match in matches:
            if match.is_file() and match.name == RESULTS_FILE:
                found.add(match.resolve())
            elif match.is_dir():
                found.update(p.resolve() for p in match.rglob(RESULTS_FILE))
    if not found:
        raise FileNotFoundError(f"no results.json found under {list(paths)}")
    return sorted(found)


#: Overrides that do not make a different setting: the seed (what a group averages over), the
#: groups already in the key, and those that change nothing a run computes.
NOT_A_SETTING = (
    "seed", "skip_completed", "ckpt_path", "logger", "tags", "group", *GROUP_KEYS, "backbone.name", "ablation", "head",
)  # fmt: skip
NOT_A_SETTING_PREFIXES = ("paths.", "logger.", "hydra.")


def run_backbone(result: dict[str, Any]) -> str:
    """The network a run trained: ``backbone.name`` of its config (what ``backbone.name=`` set), else the
    ``backbone`` option it chose (results written before the config was recorded)."""
    name = ((result.get("config") or {}).get("backbone") or {}).get("name")
    return str(name) if name else str((result.get("choices") or {}).get("backbone", "?"))


def run_settings(run_dir: Path, result: dict[str, Any]) -> dict[str, str]:
    """The overrides that make this run's setting, by key (``optim.lr`` -> ``optim.lr=0.01``).

    From ``results.json`` (``overrides``), else the run's ``.hydra/overrides.yaml``; a run with
    neither has no settings beyond its group choices.
    """
    settings = {}
    for override in recorded_overrides(run_dir, result) or []:
        key = override_key(override)
        if key not in NOT_A_SETTING and not key.startswith(NOT_A_SETTING_PREFIXES):
            settings[key] = override
    return settings


def setting_labels(settings: Sequence[dict[str, str]]) -> list[str]:
    """For settings of one method: what tells each apart, e.g. ``[optim.lr=0.01]``; "" when only one."""
    if len(settings) < 2:
        return [""] * len(settings)
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    return [" [" + ", ".join(s.get(k, f"{k}=(default)") for k in differing) + "]" for s in settings]


def group_runs(files: Iterable[Path]) -> dict[tuple[str, ...], RunGroup]:
    """Runs grouped by dataset, labels, method, backbone and every other override but the seed.

    Runs of one method in several settings (an lr sweep, Optuna trials) become one group each,
    their method named with the overrides that differ (``an [optim.lr=0.01]``).
    """
    by_setting: dict[tuple[str, ...], dict[frozenset[tuple[str, str]], list[tuple[Path, dict[str, Any]]]]]
    by_setting = defaultdict(lambda: defaultdict(list))
    for path in files:
        result = load_results(path)
        choices = result.get("choices") or {}
        key = tuple(str(choices.get(k, "?")) for k in GROUP_KEYS[:3]) + (run_backbone(result),)
        # A named variant (conf/ablation/) or another head is its own method, never averaged with the full loss.
        key = (key[0], key[1], method_name(key[2], choices.get("ablation"), choices.get("head")), key[3])
        settings = frozenset(run_settings(path.parent, result).items())
        by_setting[key][settings].append((path, result))
    groups: dict[tuple[str, ...], RunGroup] = {}
    for key, variants in by_setting.items():
        ordered = sorted(variants, key=lambda s: sorted(s))
        for settings, label in zip(ordered, setting_labels([dict(s) for s in ordered]), strict=True):
            group_key = (key[0], key[1], key[2] + label, key[3])
            group = groups.setdefault(group_key, RunGroup(group_key))
            for path, result in variants[settings]:
                if not is_completed(result):
                    group.failed.append(f"{path.parent} ({result.get('error', 'failed')})")
                else:
                    group.results.append(result)
                    group.run_dirs.append(path.parent)
    return groups


def _completed(groups: dict[tuple[str, ...], RunGroup]) -> list[dict[str, Any]]:
    return [result for key in sorted(groups) for result in groups[key].results]


def default_metrics(groups: dict[tuple[str, ...], RunGroup]) -> list[str]:
    """The table's columns when none are asked for: what the runs name as their summary.

    Each results.json lists its task's ``summary_metrics`` (classification: macro/micro mAP and
    F1; retrieval: mAP@K, mAP@all, nDCG@K, WAP@K); their union in order of appearance, or
    :data:`DEFAULT_METRICS` for runs written before results named them.
    """
    metrics: list[str] = []
    for result in _completed(groups):
        for metric in result.get("summary_metrics") or DEFAULT_METRICS:
            if metric not in metrics:
                metrics.append(metric)
    return metrics or list(DEFAULT_METRICS)


def selection_metric(groups: dict[tuple[str, ...], RunGroup]) -> str:
    """The validation metric the runs chose their best checkpoint on (the curves' column)."""
    return next((r["best_metric"] for r in _completed(groups) if r.get("best_metric")), DEFAULT_SELECTION_METRIC)


def duplicate_seeds(groups: dict[tuple[str, ...], RunGroup]) -> list[str]:
    """One line per seed that a group counts more than once (its std is then not over distinct seeds)."""
    lines = []
    for key, group in sorted(groups.items()):
        runs: dict[Any, list[str]] = defaultdict(list)
        for result, run_dir in zip(group.results, group.run_dirs, strict=True):
            runs[result.get("seed")].append(str(run_dir))
        for seed, dirs in sorted(runs.items(), key=lambda item: str(item[0])):
            if len(dirs) > 1:
                lines.append(f"{' / '.join(key[:3])} ({key[3]}): seed {seed} in {len(dirs)} runs ({', '.join(dirs)})")
    return lines


def summary_frame(groups: dict[tuple[str, ...], RunGroup], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, std and number of runs of each metric per group: the long table of values, aggregated.

    Rows: the groups, in ``groups`` order (index ``GROUP_KEYS``); columns: (``mean`` | ``std`` |
    ``n``, metric). The std of a single run is 0; a metric no run of a group has is NaN with n 0.
    """
    values = [(*key, metric, v) for key, group in groups.items() for metric in metrics for v in group.values(metric)]
    runs = pd.DataFrame.from_records(values, columns=[*GROUP_KEYS, "metric", "value"])
    stats = runs.groupby([*GROUP_KEYS, "metric"])["value"].agg(mean="mean", std="std", n="count").unstack("metric")
    index = pd.MultiIndex.from_tuples(list(groups), names=GROUP_KEYS)
    stats = stats.reindex(index=index, columns=pd.MultiIndex.from_product([["mean", "std", "n"], list(metrics)]))
    stats["n"] = stats["n"].fillna(0).astype(int)
    stats["std"] = stats["std"].mask(stats["n"] == 1, 0.0)
    return stats


def split_blocks(groups: dict[tuple[str, ...], RunGroup]) -> dict[tuple[str, str], list[RunGroup]]:
    """Groups by (dataset, labels): methods are only ranked against others on the same data and labels."""
    blocks: dict[tuple[str, str], list[RunGroup]] = defaultdict(list)
    for group in groups.values():
        blocks[(group.key[0], group.key[1])].append(group)
    return dict(sorted(blocks.items()))


def expected_runs(groups: dict[tuple[str, ...], RunGroup]) -> int:
    """Runs per group the sweep asked for: the most any group has, completed and failed together."""
    return max((len(g.results) + len(g.failed) for g in groups.values()), default=0)


def runs_cell(group: RunGroup, expected: int) -> str:
    """Completed runs, with the failed ones or the shortfall against ``expected``: "3", "2 (+1 failed)", "2 (of 3)"."""
    runs = f"{len(group.results)}"
    if group.failed:
        return runs + f" (+{len(group.failed)} failed)"
    return runs + (f" (of {expected})" if len(group.results) < expected else "")


def format_cell(mean: float, std: float, n: int, rank: float, latex: bool = False) -> str:
    """``mean ± std`` over seeds (the mean alone for one run), rank 1 bold and 2 italic; "missing" without runs."""
    if n == 0:
        return "missing"
    plus_minus = " $\\pm$ " if latex else " ± "
    text = f"{mean:.2f}{plus_minus}{std:.2f}" if n > 1 else f"{mean:.2f}"
    markup = {1: ("\\textbf{", "}") if latex else ("**", "**"), 2: ("\\textit{", "}") if latex else ("*", "*")}
    start, end = markup.get(rank, ("", ""))
    return start + text + end


def cell_frame(groups: dict[tuple[str, ...], RunGroup], metrics: Sequence[str], latex: bool = False) -> pd.DataFrame:
    """Each group's formatted cell per metric, ranked within its (dataset, labels) block, and its first mean.

    Means are ranked rounded to 6 decimals, so that ties print the same and mark the same.
    """
    summary = summary_frame(groups, metrics)
    ranks = summary["mean"].map(lambda mean: round(mean, 6)).groupby(level=["dataset", "labels"])
    ranks = ranks.rank(method="dense", ascending=False)
    stats = ("mean", "std", "n")
    cells = {m: [format_cell(*v, latex=latex) for v in zip(*(summary[s, m] for s in stats), ranks[m])] for m in metrics}
    return pd.DataFrame(cells, index=summary.index).assign(_mean=summary["mean", metrics[0]])


def long_table(groups: dict[tuple[str, ...], RunGroup], metrics: Sequence[str], latex: bool = False) -> pd.DataFrame:
    """One row per group: key, a cell per metric and the runs; blocks in order, best first in each."""
    expected = expected_runs(groups)
    table = cell_frame(groups, metrics, latex).assign(runs=[runs_cell(g, expected) for g in groups.values()])
    # Best mean of the first metric first, methods without it last; ties keep the order of the groups.
    table = table.assign(_mean=-table["_mean"].fillna(-math.inf)).reset_index()
    blocks = [block.sort_values("_mean", kind="stable") for _, block in table.groupby(["dataset", "labels"])]
    return pd.concat(blocks).drop(columns="_mean")


def markdown_rows(frame: pd.DataFrame) -> list[str]:
    """Text cells as Markdown table rows (``DataFrame.to_markdown`` needs ``tabulate`` and pads the cells)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in frame.astype(str).itertuples(index=False)]


def format_wide_table(groups: dict[tuple[str, ...], RunGroup], metric: str, latex: bool = False) -> str:
    """The papers' layout: one row per method (and backbone), one column per (dataset, labels) block.

    Ranks are per column. A method that has no run in a block says "not run"; a cell averaged over
    fewer seeds than the sweep's most, or beside failed runs, says so after its value. Rows are
    ordered by the method's mean over its blocks, best first.
    """
    expected = expected_runs(groups)
    notes = [
        f" (+{len(g.failed)} failed)" if g.failed else f" ({len(g.results)} of {expected} runs)"
        if 0 < len(g.results) < expected else ""
        for g in groups.values()
    ]  # fmt: skip
    table = cell_frame(groups, [metric], latex).reset_index().sort_values(["dataset", "labels"], kind="stable")
    table = table.assign(cell=table[metric] + [notes[i] for i in table.index])
    table["column"] = table["dataset"] + " / " + table["labels"]
    methods, columns = list(dict.fromkeys(zip(table["loss"], table["backbone"]))), list(dict.fromkeys(table["column"]))
    means = table.pivot(index=["loss", "backbone"], columns="column", values="_mean").mean(axis=1)
    order = (-means.reindex(methods).fillna(-math.inf)).to_numpy().argsort(kind="stable")
    wide = table.pivot(index=["loss", "backbone"], columns="column", values="cell").reindex(methods).iloc[order]
    wide = wide.reindex(columns=columns).fillna("not run")
    names = [f"{loss} ({backbone})" if len(set(table["backbone"])) > 1 else loss for loss, backbone in wide.index]
    wide.insert(0, "method", [tex_escape(name) for name in names] if latex else names)
    caption = f"{metric}, mean ± std over seeds (best bold, second italic)"
    if not latex:
        return "\n".join([f"{caption}:", "", *markdown_rows(wide)]) + "\n"
    lines = [f"% {caption}", r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\hline",
             " & ".join(tex_escape(t) for t in ["method", *columns]) + r" \\", r"\hline",
             *[" & ".join(row) + r" \\" for row in wide.itertuples(index=False)], r"\hline", r"\end{tabular}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def method_label(group: RunGroup, with_backbone: bool = False) -> str:
    """Loss name, plus the backbone when a block compares several: short enough for plot legends."""
    return f"{group.key[2]} ({group.key[3]})" if with_backbone else group.key[2]


_TEX_SPECIALS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}  # fmt: skip


def tex_escape(text: str) -> str:
    """Escape LaTeX specials: loss and dataset names such as ``ll_r`` would otherwise break compilation."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in text)


def format_latex(groups: dict[tuple[str, ...], RunGroup], metrics: Sequence[str]) -> str:
    """A booktabs-free ``tabular`` (compiles without extra packages), a rule after each block.

    Rendered here: ``DataFrame.to_latex`` draws booktabs' rules and none between blocks.
    """
    table = long_table(groups, metrics, latex=True)
    table[list(GROUP_KEYS)] = table[list(GROUP_KEYS)].map(tex_escape)
    lines = [r"\begin{tabular}{" + "llll" + "r" * (len(metrics) + 1) + "}", r"\hline",
             " & ".join(tex_escape(c) for c in table.columns) + r" \\", r"\hline"]  # fmt: skip
    for _, block in table.groupby(["dataset", "labels"], sort=False):
        lines += [" & ".join(row) + r" \\" for row in block.itertuples(index=False)] + [r"\hline"]
    return "\n".join([*lines, r"\end{tabular}"]) + "\n"


PER_CLASS_PREFIX = "test/AP/"


def per_class_ap(members: Sequence[RunGroup]) -> tuple[list[str], list[tuple[RunGroup, list[float]]]]:
    """Classes (in the dataset's order when results.json names it) and each method's mean AP over seeds.

    A class a method has no value for is NaN, so an incomplete run shows as a gap, not as a zero.
    """
    classes: list[str] = []
    for group in members:
        for result in group.results:
            named = [c for c in result.get("class_names", []) if f"{PER_CLASS_PREFIX}{c}" in result]
            logged = sorted(k.removeprefix(PER_CLASS_PREFIX) for k in result if k.startswith(PER_CLASS_PREFIX))
            for name in named + logged:
                if name not in classes:
                    classes.append(name)
    ordered = sorted(members, key=lambda g: g.key[2:])
    if not classes:
        return classes, [(group, []) for group in ordered]
    means = summary_frame({g.key: g for g in ordered}, [f"{PER_CLASS_PREFIX}{c}" for c in classes])["mean"]
    return classes, [(group, row.tolist()) for group, row in zip(ordered, means.to_numpy(), strict=True)]


def write_per_class(members: Sequence[RunGroup], stem: Path) -> bool:
    """``<stem>.md`` and ``<stem>.csv``; False (nothing written) when no run logged per-class AP."""
    classes, rows = per_class_ap(members)
    if not classes:
        return False
    keys = pd.DataFrame([g.key[2:] for g, _ in rows], columns=["loss", "backbone"])
    means = pd.DataFrame([vals for _, vals in rows], columns=classes)
    md = pd.concat([keys, means.map(lambda x: "missing" if math.isnan(x) else f"{x:.2f}")], axis=1)
    stem.with_suffix(".md").write_text("\n".join(markdown_rows(md)) + "\n")
    csv_table = pd.concat([keys, means.map(lambda x: "" if math.isnan(x) else f"{x:.4f}")], axis=1)
    csv_table.to_csv(stem.with_suffix(".csv"), index=False, lineterminator="\r\n")
    return True


def mean_curve(group: RunGroup, column: str) -> tuple[list[int], list[float]]:
    """Mean over the group's seeds at each epoch that at least one seed logged (finite values only)."""
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for run_dir in group.run_dirs:
        for epoch, value in read_epoch_metrics(run_dir, [column])[column].items():
            if math.isfinite(value):
                per_epoch[epoch].append(value)
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_plots(groups: dict[tuple[str, ...], RunGroup], metric: str, out: Path) -> list[Path]:
    """The PNG figures of each (dataset, labels) block; returns the files written.

    Figures only show what exists: a method without completed runs, per-class AP or CSV logs is
    left out of that figure (the Markdown table lists it as missing/failed).
    """
    written: list[Path] = []
    for (dataset, labels), members in split_blocks(groups).items():
        suffix = f"{_safe_name(dataset)}_{_safe_name(labels)}"
        title = f"{dataset} / {labels}"
        several = len({g.key[3] for g in members}) > 1

        def label(group: RunGroup, several: bool = several) -> str:
            return method_label(group, several)

        done = sorted((g for g in members if g.values(metric)), key=lambda g: -g.summary(metric)[0])
        if done:
            means, stds = zip(*[g.summary(metric)[:2] for g in done])
            fig = plot_means_with_seeds([label(g) for g in done], [g.values(metric) for g in done], means, stds,
                                        metric, f"{title}: mean ± std over seeds (grey: single runs)")  # fmt: skip
            written.append(save_figure(fig, out / f"methods_{suffix}.png"))

        classes, rows = per_class_ap(members)
        if classes:
            matrix = np.array([vals for _, vals in rows], dtype=float)
            fig = plot_heat_map(matrix, classes, [label(g) for g, _ in rows], "test AP",
                                f"{title}: per-class AP (mean over seeds)")  # fmt: skip
            written.append(save_figure(fig, out / f"per_class_AP_{suffix}.png"))

        curve_column = selection_metric(groups)
        curves = [(g, mean_curve(g, curve_column)) for g in sorted(members, key=lambda g: g.key[2:])]
        curves = [(g, c) for g, c in curves if c[0]]
        if curves:
            fig = plot_curves([(label(g), *c) for g, c in curves], f"{curve_column} (mean over seeds)",
                              f"{title}: training curves")  # fmt: skip
            written.append(save_figure(fig, out / f"curves_{suffix}.png"))

        pairs = [(label(g), [mean_curve(g, f"diag/extra_positive_{k}") for k in ("precision", "recall")])
                 for g in sorted(members, key=lambda g: g.key[2:])]  # fmt: skip
        quality = [(name, pair) for name, pair in pairs if any(epochs for epochs, _ in pair)]
        if quality:
            # Imported here: it brings Lightning, which the tables (and --help) do not need.
            from splml.callbacks.label_quality import plot_label_quality

            fig = plot_label_quality(quality, f"{title}: quality of the labels added to the observed ones")
            written.append(save_figure(fig, out / f"label_quality_{suffix}.png"))
    return written


def write_csv(groups: dict[tuple[str, ...], RunGroup], metrics: Sequence[str], path: Path) -> None:
    """Mean and std of every metric per group (4 decimals, empty without runs), with run counts."""
    ordered = dict(sorted(groups.items()))
    summary = summary_frame(ordered, metrics)
    table = summary.index.to_frame(index=False)
    for metric in metrics:
        missing = (summary["n", metric] == 0).to_numpy()
        for stat in ("mean", "std"):
            table[f"{metric}_{stat}"] = ["" if m else f"{v:.4f}" for v, m in zip(summary[stat, metric], missing)]
    table["runs"] = [len(g.results) for g in ordered.values()]
    table["failed"] = [len(g.failed) for g in ordered.values()]
    table.to_csv(path, index=False, lineterminator="\r\n")  # csv.writer's line ends, as the files always had


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="splml-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("paths", nargs="+", help="run or sweep folders, results.json files, or globs")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="columns (the first one ranks and plots); default: the runs' summary_metrics")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for table.md/.csv/.tex, per-class AP tables and PNG figures")  # fmt: skip
    args = parser.parse_args(argv)
    groups = group_runs(find_results(args.paths))
    args.metrics = args.metrics or default_metrics(groups)
    lines = markdown_rows(long_table(groups, args.metrics))
    failures = [f for g in groups.values() for f in g.failed]
    if failures:
        lines += ["", f"Failed runs ({len(failures)}):", *[f"- {f}" for f in failures]]
    duplicates = duplicate_seeds(groups)
    for line in duplicates:
        log.warning("duplicate seed: %s", line)
    if duplicates:
        lines += ["", f"Duplicate seeds ({len(duplicates)}), averaged as if distinct:", *[f"- {d}" for d in duplicates]]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        write_csv(groups, args.metrics, args.out / "table.csv")
        (args.out / "table.tex").write_text(format_latex(groups, args.metrics))
        (args.out / "table_wide.md").write_text(format_wide_table(groups, args.metrics[0]))
        (args.out / "table_wide.tex").write_text(format_wide_table(groups, args.metrics[0], latex=True))
        written = ["table.md", "table.csv", "table.tex", "table_wide.md", "table_wide.tex"]
        for (dataset, labels), members in split_blocks(groups).items():
            stem = args.out / f"per_class_AP_{_safe_name(dataset)}_{_safe_name(labels)}"
            if write_per_class(members, stem):
                written += [stem.name + ".md", stem.name + ".csv"]
        written += [p.name for p in write_plots(groups, args.metrics[0], args.out)]
        print(f"\nwrote to {args.out}: " + ", ".join(written))


if __name__ == "__main__":
    main()
