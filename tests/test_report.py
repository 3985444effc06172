"""The report command: mean/std over seeds, best in bold, failures shown, never averaged away."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from splml.report import main


def _write(
    root: Path,
    name: str,
    loss: str,
    seed: int,
    mAP: float | None,
    status: str = "completed",
    ablation: str | None = None,
    labels: str = "random",
    overrides: list[str] | None = None,
) -> None:
    run = root / name
    run.mkdir(parents=True)
    choices = {"dataset": "synthetic", "labels": labels, "loss": loss, "backbone": "resnet18", "ablation": ablation}
    result = {"status": status, "seed": seed, "choices": choices}
    if overrides is not None:
        result["overrides"] = overrides
    if status == "completed":
        result.update({"test/mAP_macro": mAP, "test/mAP_micro": mAP, "test/F1_macro": mAP})
    else:
        result["error"] = "FloatingPointError: loss is nan"
    (run / "results.json").write_text(json.dumps(result))


def test_report_table_statistics_ranks_and_failures(tmp_path, capsys):
    _write(tmp_path, "0", "an", 1, 50.0)
    _write(tmp_path, "1", "an", 2, 52.0)
    _write(tmp_path, "2", "en", 1, 60.0)
    _write(tmp_path, "3", "en", 2, 64.0)
    _write(tmp_path, "4", "full", 1, 70.0)
    _write(tmp_path, "5", "full", 2, 0.0, status="failed")
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in table.splitlines() if line.startswith("| synthetic")}
    assert "**70.00**" in rows["full"] and "1 (+1 failed)" in rows["full"]
    assert "*62.00 ± 2.83*" in rows["en"]
    assert "51.00 ± 1.41" in rows["an"] and "*" not in rows["an"].split("|")[5]
    assert "Failed runs (1)" in table and "loss is nan" in table
    csv_text = (tmp_path / "out" / "table.csv").read_text()
    assert "synthetic,random,en,resnet18,62.0000,2.8284" in csv_text


def test_report_keeps_ablation_variants_apart_from_the_full_method(tmp_path):
    _write(tmp_path, "0", "adagc", 1, 60.0)
    _write(tmp_path, "1", "adagc", 2, 62.0)
    _write(tmp_path, "2", "adagc", 1, 40.0, ablation="adagc_no_mixup")
    _write(tmp_path, "3", "adagc", 2, 42.0, ablation="adagc_no_mixup")
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in table.splitlines() if line.startswith("| synthetic")}
    assert set(rows) == {"adagc", "adagc_no_mixup"}
    assert "61.00 ± 1.41" in rows["adagc"] and "41.00 ± 1.41" in rows["adagc_no_mixup"]


def test_report_keeps_other_heads_apart_from_the_linear_head(tmp_path):
    for k, (head, mAP) in enumerate([("linear", 50.0), ("linear", 52.0), ("q2l", 60.0), ("q2l", 62.0), (None, 54.0)]):
        _write(tmp_path, str(k), "an", k, mAP)
        results = json.loads((tmp_path / str(k) / "results.json").read_text())
        if head is not None:  # results written before heads were recorded count as the linear head
            results["choices"]["head"] = head
        (tmp_path / str(k) / "results.json").write_text(json.dumps(results))
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in table.splitlines() if line.startswith("| synthetic")}
    assert set(rows) == {"an", "an+q2l"}
    assert "52.00 ± 2.00" in rows["an"] and "61.00 ± 1.41" in rows["an+q2l"]


def test_report_averages_only_over_seeds_and_names_the_settings_that_differ(tmp_path, caplog):
    # An lr sweep of AN (overrides recorded in results.json) and EN at the default lr.
    for i, (lr, seed, mAP) in enumerate([("0.01", 1, 50.0), ("0.01", 2, 52.0), ("0.001", 1, 60.0), ("0.001", 2, 62.0)]):
        _write(tmp_path, f"an{i}", "an", seed, mAP, overrides=["loss=an", f"optim.lr={lr}", f"seed={seed}"])
    _write(tmp_path, "en0", "en", 1, 40.0, overrides=["loss=en", "seed=1", "skip_completed=true"])
    _write(tmp_path, "en1", "en", 2, 42.0, overrides=["loss=en", "seed=2", "paths.cache_dir=/elsewhere"])
    # Runs written before results.json recorded the overrides: read from .hydra/overrides.yaml.
    for name, seed, mAP, gamma in [("scl0", 1, 70.0, "0.5"), ("scl1", 2, 72.0, "0.5"), ("scl2", 1, 30.0, "2.0")]:
        _write(tmp_path, name, "en_scl", seed, mAP)
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(
            f"- loss=en_scl\n- seed={seed}\n- loss.gamma={gamma}\n"
        )
    with caplog.at_level(logging.WARNING):
        main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in table.splitlines() if line.startswith("| synthetic")}
    assert set(rows) == {"an [optim.lr=0.01]", "an [optim.lr=0.001]", "en", "en_scl [loss.gamma=0.5]",
                         "en_scl [loss.gamma=2.0]"}  # fmt: skip
    assert "51.00 ± 1.41" in rows["an [optim.lr=0.01]"] and "61.00 ± 1.41" in rows["an [optim.lr=0.001]"]
    assert "41.00 ± 1.41" in rows["en"], "skip_completed and paths do not make another setting"
    assert "71.00 ± 1.41" in rows["en_scl [loss.gamma=0.5]"]
    wide = (tmp_path / "out" / "table_wide.md").read_text()
    assert "| an [optim.lr=0.001] | *61.00 ± 1.41* |" in wide
    assert "Duplicate seeds" not in table and not caplog.records


def test_report_warns_on_a_seed_counted_twice(tmp_path, caplog):
    _write(tmp_path, "a", "an", 1, 50.0, overrides=["loss=an", "seed=1"])
    _write(tmp_path, "b", "an", 1, 54.0, overrides=["loss=an", "seed=1"])
    _write(tmp_path, "c", "an", 2, 52.0, overrides=["loss=an", "seed=2"])
    with caplog.at_level(logging.WARNING):
        main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "Duplicate seeds (1), averaged as if distinct:" in table
    note = next(line for line in table.splitlines() if line.startswith("- synthetic / random / an"))
    assert "seed 1 in 2 runs" in note and str(tmp_path / "a") in note and str(tmp_path / "b") in note
    assert "seed 1 in 2 runs" in caplog.text


def test_wide_table_has_methods_as_rows_and_ranks_each_column(tmp_path):
    _write(tmp_path, "0", "an", 1, 50.0)
    _write(tmp_path, "1", "an", 2, 52.0)
    _write(tmp_path, "2", "en", 1, 60.0)
    _write(tmp_path, "3", "en", 2, 64.0)
    _write(tmp_path, "4", "an", 1, 70.0, labels="dominant")
    _write(tmp_path, "5", "an", 2, 72.0, labels="dominant")
    _write(tmp_path, "6", "full", 1, 90.0, labels="dominant")
    _write(tmp_path, "7", "en", 1, 40.0, labels="dominant")
    _write(tmp_path, "8", "en", 2, 0.0, status="failed", labels="dominant")
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table_wide.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header == "| method | synthetic / dominant | synthetic / random |"
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in table.splitlines()[4:]}
    # Ranked within each column: AN is second behind full on dominant and behind EN on random.
    assert rows["an"] == [" *71.00 ± 1.41* ", " *51.00 ± 1.41* "]
    assert rows["full"] == [" **90.00** (1 of 2 runs) ", " not run "]
    assert rows["en"] == [" 40.00 (+1 failed) ", " **62.00 ± 2.83** "]
    tex = (tmp_path / "out" / "table_wide.tex").read_text()
    assert r"\textbf{90.00} (1 of 2 runs) & not run \\" in tex
    # The long LaTeX table marks the shortfall too, as the Markdown one does.
    long_tex = (tmp_path / "out" / "table.tex").read_text()
    assert r"& 1 (of 2) \\" in long_tex and r"& 1 (+1 failed) \\" in long_tex


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        main([str(tmp_path)])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_rich(root: Path, name: str, loss: str, seed: int, aps: dict[str, float], curves: bool = True) -> None:
    """A completed run with per-class AP and, optionally, a Lightning-style csv/metrics.csv."""
    run = root / name
    run.mkdir(parents=True)
    mAP = sum(aps.values()) / len(aps)
    result = {"status": "completed", "seed": seed, "class_names": list(aps),
              "choices": {"dataset": "synthetic", "labels": "random", "loss": loss, "backbone": "resnet18"},
              "test/mAP_macro": mAP, "test/mAP_micro": mAP, "test/F1_macro": mAP,
              **{f"test/AP/{c}": v for c, v in aps.items()}}  # fmt: skip
    (run / "results.json").write_text(json.dumps(result))
    if curves:
        (run / "csv").mkdir()
        rows = ["epoch,step,train/loss,val/mAP_macro,diag/extra_positive_precision,diag/extra_positive_recall"]
        for epoch in range(3):
            rows.append(f"{epoch},{10 * epoch + 9},0.5,,,")  # train row: blanks elsewhere, as Lightning writes
            diag = f"{60 + epoch},{20 + 5 * epoch}" if loss == "en" else ","
            rows.append(f"{epoch},{10 * epoch + 9},,{mAP - 2 + epoch},{diag}")
        (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_report_latex_per_class_and_plots(tmp_path):
    _write_rich(tmp_path, "0", "an", 1, {"cat": 40.0, "dog_x": 60.0})
    _write_rich(tmp_path, "1", "an", 2, {"cat": 42.0, "dog_x": 64.0})
    _write_rich(tmp_path, "2", "en", 1, {"cat": 70.0, "dog_x": 80.0})
    _write_rich(tmp_path, "3", "en", 2, {"cat": 74.0, "dog_x": 84.0}, curves=False)  # no csv/: must not break
    _write_rich(tmp_path, "4", "ll_r", 1, {"cat": 10.0, "dog_x": 20.0})
    _write(tmp_path, "5", "ll_r", 2, None, status="failed")
    out = tmp_path / "out"
    main([str(tmp_path), "--out", str(out)])

    tex = (out / "table.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"\textbf{77.00 $\pm$ 2.83}" in tex  # en: best
    assert r"\textit{51.50 $\pm$ 2.12}" in tex  # an: second
    assert r"ll\_r" in tex and r"test/mAP\_macro" in tex and "(+1 failed)" in tex

    per_class = (out / "per_class_AP_synthetic_random.csv").read_text().splitlines()
    assert per_class[0] == "loss,backbone,cat,dog_x"
    assert "an,resnet18,41.0000,62.0000" in per_class and "en,resnet18,72.0000,82.0000" in per_class
    assert "ll_r,resnet18,10.0000,20.0000" in per_class
    assert "| en | resnet18 | 72.00 | 82.00 |" in (out / "per_class_AP_synthetic_random.md").read_text()

    for name in ("methods", "per_class_AP", "curves", "label_quality"):
        png = out / f"{name}_synthetic_random.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name


def test_report_curves_average_seeds_and_skip_missing_logs(tmp_path):
    from splml.report import find_results, group_runs, mean_curve

    _write_rich(tmp_path, "0", "an", 1, {"cat": 40.0, "dog": 60.0})
    _write_rich(tmp_path, "1", "an", 2, {"cat": 44.0, "dog": 60.0})
    _write_rich(tmp_path, "2", "an", 3, {"cat": 0.0, "dog": 0.0}, curves=False)
    (group,) = group_runs(find_results([str(tmp_path)])).values()
    epochs, values = mean_curve(group, "val/mAP_macro")
    assert epochs == [0, 1, 2] and values == pytest.approx([49.0, 50.0, 51.0])
    assert mean_curve(group, "diag/extra_positive_precision") == ([], [])


def test_summary_frame_is_mean_and_sample_std_over_seeds(tmp_path):
    """The pandas aggregation behind every table: mean, sample std (0 for one run), counts, missing metrics."""
    import random
    import statistics

    from splml.report import find_results, group_runs, summary_frame

    rng = random.Random(3)
    values = {"an": [rng.uniform(0, 100) for _ in range(5)], "en": [rng.uniform(0, 100)], "full": [None, None]}
    for loss, maps in values.items():
        for seed, mAP in enumerate(maps):
            _write(tmp_path, f"{loss}{seed}", loss, seed, mAP)
    groups = group_runs(find_results([str(tmp_path)]))
    summary = summary_frame(groups, ["test/mAP_macro", "test/not_logged"])
    key = ("synthetic", "random", "an", "resnet18")
    assert summary.loc[key, ("mean", "test/mAP_macro")] == pytest.approx(statistics.fmean(values["an"]), abs=1e-12)
    assert summary.loc[key, ("std", "test/mAP_macro")] == pytest.approx(statistics.stdev(values["an"]), abs=1e-12)
    assert summary.loc[key, ("n", "test/mAP_macro")] == 5
    single = summary.loc[("synthetic", "random", "en", "resnet18")]
    assert (single["std", "test/mAP_macro"], single["n", "test/mAP_macro"]) == (0.0, 1)
    assert summary.loc[("synthetic", "random", "full", "resnet18"), ("n", "test/mAP_macro")] == 0
    assert (summary["n", "test/not_logged"] == 0).all() and summary["mean", "test/not_logged"].isna().all()
    assert list(summary.index) == list(groups)  # the groups' order, which the tables keep for ties

    main([str(tmp_path), "--out", str(tmp_path / "out")])
    csv_bytes = (tmp_path / "out" / "table.csv").read_bytes()
    assert csv_bytes.startswith(b"dataset,labels,loss,backbone,test/mAP_macro_mean,") and b"\r\n" in csv_bytes
    assert b"synthetic,random,full,resnet18,,,,,,,2,0\r\n" in csv_bytes  # no value: empty cells, not NaN
