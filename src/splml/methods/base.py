"""The contract every single-positive loss follows, and the helpers the formulas share.

A method is a pure function holding the formula (with the paper in its docstring) and a thin
:class:`SPMLLoss` subclass that reads what the function needs from the model outputs and the
batch. Losses that need per-sample memory read it from ``batch["extras"]``, which the store
callbacks they declare (:meth:`SPMLLoss.callbacks`) fill before the forward pass. The
LightningModule never branches on the method's name.

Batch contract (produced by every datamodule)::

    image     float  B x C x H x W
    observed  float  B x L   1 = annotated positive, 0 = unknown, -1 = annotated negative
    target    float  B x L   full ground truth (for validation/test, the oracle and diagnostics)
    index     long   B       position of the sample in its dataset (key of every store)
    aug       dict           optional augmentation record (crop box, flip) for spatial methods
    extras    dict           filled by callbacks (expected positives, pseudo labels, ...)

Model outputs: ``logits`` (B x L) and, with a spatial head, ``maps`` (B x L x G x G); for
``task=retrieval``, ``z`` (the L2-normalised projection, B x D or B x V x D with V views per image).

A loss may return, beside ``loss`` and scalar logs, ``pseudo_positive_mask`` (bool B x L): the
unannotated entries it treats as (possibly) positive in this step (rejected or corrected large
losses, SPLC's pseudo-labels). The module then logs their precision and recall against the
hidden full labels once per epoch; stores log the same ``diag/*`` figures for their state.

Conventions every loss of the suite follows:

* ``-log`` terms use :func:`neg_log` (``-log(x + 1e-5)``), never logits-based BCE, so that all
  methods share the same numerical floor and stay finite at ``p`` exactly 0 or 1.
* Annotated negatives (``observed == -1``) are known labels: every method trains them with
  ``-log(1 - p)`` (weight 1). They are never "unknown", so no method ignores, rejects, corrects or
  pseudo-labels them. With pure single-positive data there are none, so this only matters for
  partially annotated variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Probability floor used by every ``-log(p)`` style loss; chosen to match the SPML literature
#: (Cole et al. 2021 use ``-log(p + 1e-5)``).
LOG_EPS = 1e-5


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``, the literature's numerically safe log used by every loss here."""
    return -torch.log(x + LOG_EPS)


@dataclass
class LossContext:
    """Where training is when the loss is evaluated (losses with schedules read it)."""

    epoch: int = 0
    max_epochs: int = 1
    global_step: int = 0
    training: bool = True


class SPMLLoss(nn.Module):
    """Base class: ``forward(outputs, batch, ctx) -> scalar`` or ``{"loss": scalar, <logs>}``.

    ``name`` is what results and loggers record; subclasses set it (the ``loss=`` option, see
    :mod:`splml.methods.registry`).
    """

    name: str = "base"

    #: The task (``task=`` group) whose model outputs the loss reads: classification losses read
    #: ``logits``; the contrastive losses of :mod:`splml.methods.contrastive` read embeddings and
    #: say ``"retrieval"``. Building a run checks that the loss fits the task.
    task: str = "classification"

    #: Extras (keys of ``batch["extras"]``) the loss cannot work without; the module checks
    #: them so that a loss used without its callback fails with a clear message.
    requires_extras: tuple[str, ...] = ()

    def forward(
        self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext
    ) -> Tensor | dict[str, Tensor]:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} does not define forward(outputs, batch, ctx)")

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        """Lightning callbacks that own this method's per-sample stores (none by default).

        Called once by the training script, with the size of the training split, so that a
        method's memory is declared next to its formula rather than in the training script.
        """
        return []


# -- masks of the observed label matrix --------------------------------------------------------


def observed_positive_mask(observed: Tensor) -> Tensor:
    """Boolean mask of annotated positives (``observed == 1``)."""
    return observed > 0.5


def unknown_mask(observed: Tensor) -> Tensor:
    """Boolean mask of unknown entries (``observed == 0``); annotated negatives are not unknown."""
    return observed.abs() < 0.5


def annotated_negative_mask(observed: Tensor) -> Tensor:
    """Boolean mask of annotated negatives (``observed == -1``)."""
    return observed < -0.5


# -- shared pieces of the formulas -------------------------------------------------------------


def soft_bce(probs: Tensor, target: Tensor) -> Tensor:
    """Element-wise ``t * -log(p) + (1 - t) * -log(1 - p)`` for a (possibly soft) target ``t``."""
    return target * neg_log(probs) + (1 - target) * neg_log(1 - probs)


def linear_schedule(start: float, end: float, epoch: int, max_epochs: int) -> float:
    """Value moving linearly from ``start`` (first epoch) to ``end`` (last epoch).

    ``epoch`` is 0-based; the fraction is ``epoch / (max_epochs - 1)`` clipped to ``[0, 1]`` so the
    last epoch of training uses exactly ``end``. A single-epoch run stays at ``start``.
    """
    if max_epochs <= 1:
        return float(start)
    frac = min(max(epoch / (max_epochs - 1), 0.0), 1.0)
    return float(start + (end - start) * frac)


def require_extra(batch: dict[str, Any], key: str, loss_name: str) -> Any:
    """Fetch ``batch["extras"][key]`` or fail with a message naming the loss and the missing key.

    Extras are filled by the callbacks that own per-sample stores; a missing key means the loss
    was configured without its callback.
    """
    extras = batch.get("extras") or {}
    if key not in extras:
        raise KeyError(
            f"loss '{loss_name}' needs batch['extras'][{key!r}] (filled by its store callback); "
            f"available extras: {sorted(extras)}"
        )
    return extras[key]
