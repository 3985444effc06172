"""AdaGC's figure: the monitored curve with the detection's fit, window votes and trigger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splml.methods.adagc.detection import saturating_curve, window_slopes
from splml.utils.plotting import integer_epochs, pyplot


def plot_trigger(
    curve: Sequence[float],
    rule: str,
    decision: Any,
    out: str | Path,
    score: str = "jaccard",
    window_sizes: Sequence[int] = (),
) -> Path:
    """Write the PNG ``out``: the curve (x = epochs finished, as the rule counts them) and what was decided.

    Left: the curve, the fit ``a (1 - exp(-b x^c))`` over the first ``dep`` epochs, ``mid``,
    ``dep``, each window's vote, the trigger epoch (the state rolled back to) and the epoch of
    the decision. Right (``aio2``): the slope of every window, whose minimum the votes point at.
    ``decision`` is the switch's :class:`~splml.methods.adagc.switch.Decision` or None.
    """
    values = np.asarray(curve, dtype=np.float64)
    x = np.arange(1, values.size + 1)
    panels = 2 if rule == "aio2" and window_sizes else 1
    fig, axes = pyplot().subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(x, values, "o-", color="C0", label=f"teacher {score} vs observed labels")
    found = getattr(decision, "detection", None)
    if found is not None:
        dep, mid = int(found["dep"]), int(found["mid"])
        if found["fit"] is not None:
            dense = np.linspace(1, max(dep, 1), 100)
            ax.plot(dense, saturating_curve(dense, *found["fit"]), color="C1", label="fit a(1 - exp(-b x^c))")
        ax.axvspan(mid, dep, color="C1", alpha=0.1, label=f"transition: mid {mid} .. dep {dep}")
        for i, (ws, vote) in enumerate(sorted(found["votes"].items())):
            ax.axvline(vote, color=f"C{4 + i}", linestyle=":", linewidth=1, label=f"vote of window {ws}: {vote}")
    if decision is not None:
        ax.axvline(decision.trigger_epoch, color="C3", linewidth=2, label=f"trigger: epoch {decision.trigger_epoch}")
        if decision.decided_at != decision.trigger_epoch:
            ax.axvline(decision.decided_at, color="C3", linestyle="--", label=f"decided after {decision.decided_at}")
        title = f"AdaGC ({rule}): corrections from epoch {decision.trigger_epoch}"
    else:
        title = f"AdaGC ({rule}): warm-up not ended"
    integer_epochs(ax)
    ax.set_xlabel("epochs finished")
    ax.set_ylabel(score)
    ax.legend(fontsize=7)
    ax.set_title(title)
    if panels == 2:
        slopes_ax = axes[0][1]
        for i, (ws, slopes) in enumerate(window_slopes(values, window_sizes).items()):
            slopes_ax.plot(np.arange(ws, ws + len(slopes)), slopes, "o-", color=f"C{4 + i}", label=f"window {ws}")
        integer_epochs(slopes_ax)
        slopes_ax.set_xlabel("epochs finished (window end)")
        slopes_ax.set_ylabel("slope per epoch (>= 0)")
        slopes_ax.legend(fontsize=7)
        slopes_ax.set_title("window slopes")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    pyplot().close(fig)
    return out
