"""Label-quality curves of a run, as a PNG next to it and an image in W&B / TensorBoard.

Methods that add positives beyond the annotated label (expected positives, LL corrections,
pseudo-labels) log, per epoch, the precision and recall of those positives against the hidden
full labels and the number of false negatives the loss still penalises (``diag/*``; see
:class:`splml.module.SPMLModule`). This callback turns those per-epoch values into one figure.

It reads them back from the run's CSV log rather than keeping its own copy: that log survives a
resume with every earlier row (``ResumableCSVLogger``), so the figure of a resumed run is the
figure of the whole run. Methods that log none of the columns get no figure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from splml.io.run_folder import read_epoch_metrics
from splml.loggers import log_figure
from splml.utils.plotting import integer_epochs, line_style, pyplot

log = logging.getLogger(__name__)

#: (column, panel label) of the figure, in panel order.
DEFAULT_PANELS: tuple[tuple[str, str], ...] = (
    ("diag/extra_positive_precision", "precision"),
    ("diag/extra_positive_recall", "recall"),
    ("diag/false_negatives_penalised", "false negatives penalised (count)"),
)


class LabelQualityPlot(L.Callback):
    """Writes ``label_quality.png`` in the run folder (and logs it to W&B / TensorBoard) every epoch and at the end."""

    def __init__(self, panels: Sequence[Sequence[str]] = DEFAULT_PANELS, filename: str = "label_quality.png") -> None:
        self.panels = [(str(column), str(label)) for column, label in panels]
        self.filename = filename
        self._warned_no_csv = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.plot(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plot(trainer)

    def plot(self, trainer: L.Trainer) -> Path | None:
        """Draw the curves logged so far; returns the PNG written (None when there is nothing to draw)."""
        if not trainer.is_global_zero:
            return None
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            if not self._warned_no_csv:
                log.warning("label_quality.png is drawn from the CSV log, and this run has no CSV logger: no figure")
                self._warned_no_csv = True
            return None
        csv_logger.save()  # rows of the epoch just finished may still be buffered
        values = read_epoch_metrics(Path(csv_logger.save_dir), [c for c, _ in self.panels])
        curves = []
        for column, _ in self.panels:
            points = sorted((e, v) for e, v in values[column].items() if math.isfinite(v))
            curves.append(([e for e, _ in points], [v for _, v in points]))
        if not any(epochs for epochs, _ in curves):
            return None
        method = getattr(getattr(trainer, "lightning_module", None), "loss", None)
        name = getattr(method, "name", "run")
        fig = plot_label_quality([(name, curves)], f"{name}: labels beyond the annotated one, against the full labels",
                                 kinds=[label for _, label in self.panels])  # fmt: skip
        out = Path(trainer.default_root_dir) / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100, bbox_inches="tight")
        pyplot().close(fig)
        log_figure(trainer, "label_quality", out)
        return out


#: (label, [(epochs, values) per panel]) of one line in every panel.
LabelQualitySeries = tuple[str, Sequence[tuple[Sequence[int], Sequence[float]]]]


def plot_label_quality(
    series: Sequence[LabelQualitySeries], title: str, kinds: Sequence[str] = ("precision", "recall")
) -> Any:
    """One panel per kind (extra-positive precision, recall, ...), one line per labelled series.

    Used by :class:`LabelQualityPlot` (one run) and by the report (a line per method).
    """
    fig, axes = pyplot().subplots(1, len(kinds), figsize=(5 * len(kinds), 4), sharex=True, squeeze=False)
    for i, (name, curves) in enumerate(series):
        for ax, (epochs, values) in zip(axes[0], curves, strict=False):
            if len(epochs):
                ax.plot(epochs, values, label=name, **line_style(i))
    for ax, kind in zip(axes[0], kinds, strict=True):
        integer_epochs(ax)
        ax.set_ylabel(kind if "(" in kind else f"extra-positive {kind} (%)")
    fig.suptitle(title)
    fig.tight_layout()
    # One legend beside the panels (a method may be absent from one of them), not over the curves.
    legend: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    if legend:
        fig.legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
