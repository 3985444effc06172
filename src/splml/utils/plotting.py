"""The figures of a method comparison (matplotlib, Agg backend): means with seeds, heat maps, curves.

Pure drawing: each function takes the numbers and the labels and returns a figure, so the report
(:mod:`splml.report`) and the training-time callbacks (:mod:`splml.callbacks.label_quality`)
draw with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (figures are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_style(i: int) -> dict[str, Any]:
    """Colour, dash and marker of the i-th line: a comparison of 20+ methods outgrows one colour cycle."""
    return {
        "color": f"C{i % 10}",
        "linestyle": ("-", "--", ":")[(i // 10) % 3],
        "marker": (".", "x", "^")[(i // 10) % 3],
        "markersize": 4,
    }


def integer_epochs(ax: Any) -> None:
    """Label the x axis "epoch" with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_means_with_seeds(
    labels: Sequence[str], seeds: Sequence[Sequence[float]], means: Sequence[float], stds: Sequence[float],
    ylabel: str, title: str,
) -> Any:  # fmt: skip
    """One point with a std error bar per method, each seed drawn in grey behind it.

    Points, not bars: methods differ by a few points on a 0-100 scale, so the axis is zoomed to
    the data, and each seed is drawn so that the spread behind the std shows.
    """
    fig, ax = pyplot().subplots(figsize=(max(4.0, 0.6 * len(labels) + 2), 4))
    for x, values in enumerate(seeds):
        ax.scatter([x] * len(values), values, s=10, color="0.6", zorder=2)
    ax.errorbar(range(len(labels)), means, yerr=stds, fmt="o", capsize=3, color="tab:blue", zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def plot_heat_map(matrix: np.ndarray, columns: Sequence[str], rows: Sequence[str], value: str, title: str) -> Any:
    """A rows x columns heat map; NaN cells (no value) are left blank."""
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.35 * len(columns) + 3), max(3.0, 0.35 * len(rows) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=ax, label=value)
    ax.set_title(title)
    return fig


def plot_curves(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], ylabel: str, title: str) -> Any:
    """One line per (label, epochs, values), the legend beside the axes (two columns past 12 lines)."""
    many = len(curves) > 12
    fig, ax = pyplot().subplots(figsize=(7 + 1.2 * many, 4))
    for i, (label, epochs, values) in enumerate(curves):
        ax.plot(epochs, values, label=label, **line_style(i))
    integer_epochs(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=1 + many, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (tight layout and bounding box, the legend beside included) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
