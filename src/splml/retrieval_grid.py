"""The retrieval figure: each query beside its top-k database images, relevant ones framed green."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

RELEVANT_COLOUR = "#1a9641"
IRRELEVANT_COLOUR = "#d7191c"


def _short(names: Sequence[str], width: int = 34) -> str:
    text = ", ".join(names) if names else "(no label)"
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_retrieval_grid(
    queries: Sequence[np.ndarray],
    query_labels: Sequence[Sequence[str]],
    retrieved: Sequence[Sequence[np.ndarray]],
    shared: Sequence[Sequence[int]],
    out_path: str | Path,
) -> Path:
    """One row per query: the query image (titled with its labels), then its retrieved images in rank order.

    ``queries`` and ``retrieved`` hold ``H x W x 3`` uint8 pictures; ``shared[q][j]`` is the number
    of labels retrieved image ``j`` shares with query ``q``: a frame in green when it shares at
    least one (relevant), red otherwise, and the count in the title. Drawn with the
    object-oriented Agg canvas, so the global matplotlib backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (len(queries) == len(query_labels) == len(retrieved) == len(shared)) or not queries:
        raise ValueError(
            f"one row per query: {len(queries)} queries, {len(query_labels)} label lists, "
            f"{len(retrieved)} retrieved rows, {len(shared)} shared-count rows"
        )
    columns = 1 + max(len(row) for row in retrieved)
    fig = Figure(figsize=(1.6 * columns, 1.9 * len(queries)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(queries), columns, squeeze=False)
    for row, (query, names, images, counts) in enumerate(zip(queries, query_labels, retrieved, shared, strict=True)):
        ax = axes[row][0]
        ax.imshow(query)
        ax.set_title(f"query: {_short(names)}", fontsize=6)
        for side in ax.spines.values():
            side.set_linewidth(2.0)
        for col in range(1, columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col > len(images):
                ax.axis("off")
                continue
            ax.imshow(images[col - 1])
            count = int(counts[col - 1])
            colour = RELEVANT_COLOUR if count > 0 else IRRELEVANT_COLOUR
            for side in ax.spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(3.0)
            ax.set_title(f"#{col}: {count} shared", fontsize=6, color=colour)
        axes[row][0].set_xticks([])
        axes[row][0].set_yticks([])
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
