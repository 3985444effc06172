"""Label statistics of any splml datamodule: frequencies, labels per image, co-occurrence.

Works on anything exposing ``class_names`` and ``datasets`` (split -> dataset with an N x L
``targets`` matrix) after ``setup``: reBEN, the synthetic set and every RGB datamodule. The
numbers are what the configs need (``expected_positives`` = mean labels per training image)
and what a paper's dataset table reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.io.run_folder import write_rows


def split_targets(datamodule: Any) -> dict[str, np.ndarray]:
    """The full label matrix of every split of a set-up datamodule."""
    if not getattr(datamodule, "datasets", None):
        raise ValueError("the datamodule has no datasets: call setup() first")
    return {split: np.asarray(ds.targets) for split, ds in datamodule.datasets.items()}


def label_statistics(targets: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Any]:
    """Per split: images, label counts, labels-per-image histogram and co-occurrence counts."""
    stats: dict[str, Any] = {}
    for split, y in targets.items():
        y = (np.asarray(y) > 0).astype(np.int64)
        if y.ndim != 2 or y.shape[1] != len(class_names):
            raise ValueError(f"split {split}: labels of shape {y.shape} for {len(class_names)} classes")
        per_image = y.sum(1)
        stats[split] = {
            "images": int(y.shape[0]),
            "class_counts": y.sum(0),
            "labels_per_image": np.bincount(per_image, minlength=len(class_names) + 1),
            "cooccurrence": y.T @ y,
            "mean_labels_per_image": float(per_image.mean()) if len(y) else float("nan"),
        }
    return stats


def write_statistics(
    stats: Mapping[str, Any], class_names: Sequence[str], out_dir: Path, title: str = ""
) -> list[Path]:
    """CSV tables, ``summary.json`` and ``label_statistics.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    splits = list(stats)
    written = [
        write_rows(
            out_dir / "label_frequency.csv",
            ["class", *[f"{s}_count" for s in splits], *[f"{s}_fraction" for s in splits]],
            [
                [
                    name,
                    *[int(stats[s]["class_counts"][c]) for s in splits],
                    *[round(stats[s]["class_counts"][c] / max(stats[s]["images"], 1), 6) for s in splits],
                ]
                for c, name in enumerate(class_names)
            ],
        ),
    ]
    max_k = max(int(np.flatnonzero(stats[s]["labels_per_image"]).max(initial=0)) for s in splits)
    written.append(
        write_rows(
            out_dir / "labels_per_image.csv",
            ["labels", *splits],
            [[k, *[int(stats[s]["labels_per_image"][k]) for s in splits]] for k in range(max_k + 1)],
        )
    )
    for s in splits:
        matrix = stats[s]["cooccurrence"]
        written.append(
            write_rows(
                out_dir / f"cooccurrence_{s}.csv",
                ["class", *class_names],
                [[name, *map(int, matrix[c])] for c, name in enumerate(class_names)],
            )
        )
    summary = {
        s: {"images": stats[s]["images"], "mean_labels_per_image": round(stats[s]["mean_labels_per_image"], 4)}
        for s in splits
    }
    (out_dir / "summary.json").write_text(json.dumps({"title": title, "splits": summary}, indent=2))
    written.append(out_dir / "summary.json")
    written.append(plot_statistics(stats, class_names, out_dir / "label_statistics.png", title))
    return written


def plot_statistics(stats: Mapping[str, Any], class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """Three panels: class frequency per split, labels-per-image histogram, train co-occurrence.

    The co-occurrence panel shows P(column class | row class) = count(i, j) / count(i), which
    reads directly as "how often does j come with i" whatever the class frequencies.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(stats)
    n_classes = len(class_names)
    show_names = n_classes <= 40
    # Long names (reBEN's "Land principally occupied by agriculture, ...") are shortened for ticks.
    ticks = [n if len(n) <= 28 else n[:27] + "..." for n in class_names]
    fig = plt.figure(figsize=(14, 12), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.6], width_ratios=[1, 1.5])
    freq_ax, hist_ax, co_ax = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    width = 0.8 / len(splits)
    x = np.arange(n_classes)
    for k, s in enumerate(splits):
        freq_ax.bar(x + k * width, stats[s]["class_counts"] / max(stats[s]["images"], 1), width, label=s)
    freq_ax.set_ylabel("fraction of images")
    freq_ax.set_title("class frequency")
    if show_names:
        freq_ax.set_xticks(x + 0.4 - width / 2, ticks, rotation=60, ha="right", fontsize=7)
    freq_ax.legend()
    for s in splits:
        hist = stats[s]["labels_per_image"]
        last = int(np.flatnonzero(hist).max(initial=0))
        hist_ax.plot(np.arange(last + 1), hist[: last + 1] / max(stats[s]["images"], 1), marker="o", label=s)
    hist_ax.set_xlabel("labels per image")
    hist_ax.set_ylabel("fraction of images")
    hist_ax.set_title("labels per image")
    hist_ax.legend()
    ref = "train" if "train" in stats else splits[0]
    co = stats[ref]["cooccurrence"].astype(np.float64)
    conditional = co / np.maximum(np.diag(co)[:, None], 1)
    im = co_ax.imshow(conditional, cmap="viridis", vmin=0, vmax=1)
    co_ax.set_title(f"P(column | row), {ref}")
    if show_names:
        co_ax.set_xticks(x, ticks, rotation=90, fontsize=6)
        co_ax.set_yticks(x, ticks, fontsize=6)
    fig.colorbar(im, ax=co_ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dataset_statistics(datamodule: Any, out_dir: Path, title: str = "") -> dict[str, Any]:
    """Set up ``datamodule`` if needed, write every statistic into ``out_dir``, return them."""
    if not getattr(datamodule, "datasets", None):
        datamodule.setup("fit")
    names = list(datamodule.class_names)
    stats = label_statistics(split_targets(datamodule), names)
    write_statistics(stats, names, out_dir, title)
    return stats
