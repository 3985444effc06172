"""SCL's figure: the stored heatmaps of a few training images (annotated, unannotated true, negative)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class HeatmapSource(Protocol):
    """What the figure reads of a :class:`~splml.methods.scl.store.HeatmapStore`."""

    @property
    def heatmaps(self) -> Tensor | None: ...

    @property
    def observed(self) -> Tensor | None: ...

    def class_means(self, sample_indices: Tensor | None = None) -> Tensor: ...

    def class_map(self, sample: int, cls: int) -> Tensor: ...


def plot_heatmaps(
    store: HeatmapSource,
    sample_indices: list[int] | Tensor,
    class_names: list[str],
    out_path: str | Path,
    targets: Tensor | np.ndarray,
    observed: Tensor | None = None,
) -> Path:
    """PNG with, per sample, its annotated class, one unannotated true class and one negative.

    The unannotated true class is the one the store rates highest (did SCL discover it?); the
    negative likewise (does the store leak onto absent classes?). ``targets`` are the full
    N x L training labels; ``observed`` defaults to the annotations the store read during training.
    Drawn with the object-oriented Agg canvas, so the global matplotlib backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if store.heatmaps is None:
        raise ValueError("the heatmap store has not been created yet")
    obs = store.observed if observed is None else torch.as_tensor(observed) > 0.5
    if obs is None:
        raise ValueError("pass observed: the store has not read the training annotations")
    indices = [int(i) for i in torch.as_tensor(sample_indices).reshape(-1).tolist()]
    means = store.class_means(torch.tensor(indices, dtype=torch.long))
    fig = Figure(figsize=(9, 3 * max(1, len(indices))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(indices)), 3, squeeze=False)
    for row, n in enumerate(indices):
        truth = torch.as_tensor(np.asarray(targets[n])) > 0.5  # one row: targets may be N x L at ImageNet scale
        groups = (
            ("annotated", obs[n]),
            ("unannotated true", truth & ~obs[n]),
            ("negative", ~truth & ~obs[n]),
        )
        for col, (label, mask) in enumerate(groups):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if not bool(mask.any()):
                ax.set_title(f"#{n} {label}: none", fontsize=8)
                continue
            c = int(torch.where(mask, means[row], torch.full_like(means[row], -1.0)).argmax())
            ax.imshow(store.class_map(n, c).numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            name = class_names[c] if len(class_names[c]) <= 28 else class_names[c][:27] + "…"
            ax.set_title(f"#{n} {label}: {name} ({float(means[row, c]):.2f})", fontsize=8)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
