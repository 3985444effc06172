"""AdaGC's weight-EMA teacher (RECONSTRUCTION; see :mod:`splml.methods.adagc.loss`).

A teacher is timm's :class:`timm.utils.ModelEmaV3` of the model: a frozen deep copy whose
parameters follow the student's by ``theta_T <- m theta_T + (1 - m) theta_S`` at every update
(after each optimizer step, or once per epoch) and whose buffers (batch-norm statistics) are copied. What this module adds:
the momentum schedule :func:`teacher_momentum_at` (the Mean-Teacher ramp, passed to the EMA as
its decay at every update) and, under DDP, rank 0's buffers on every rank
(:func:`broadcast_buffers_`), so that the ranks' teachers stay identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn

from splml.methods.store import distributed_ready


def teacher_momentum_at(step: int, momentum: float, ramp: bool = True) -> float:
    """EMA momentum of the ``step``-th update (1 = the first; one per optimizer step or per epoch).

    With ``ramp`` (Tarvainen & Valpola, Mean Teacher, 2017) it is ``min(momentum, 1 - 1/step)``:
    the teacher is the plain average of all student weights so far until that average would
    move faster than ``momentum`` allows. Without it a 0.999 teacher would still be ~37 % random
    initialisation after 1000 steps, which is longer than many short runs here. (timm's own
    warm-up, ``1 - (1 + step)^-power``, is another curve, so the decay is computed here.)
    """
    if not ramp:
        return float(momentum)
    return float(min(momentum, 1.0 - 1.0 / max(1, step)))


def broadcast_buffers_(module: nn.Module) -> None:
    """Rank 0's buffers on every rank (no-op without distributed training).

    Under DDP the parameters are identical on every rank after the optimizer step, but each
    rank's batch-norm running statistics have just been updated from its own batch (DDP only
    broadcasts rank 0's at the start of the next forward). Copied into the teacher as they are,
    they would make the ranks' teachers -- and their checksums -- differ; DDP's own rule (rank 0
    wins) keeps them identical.
    """
    if not distributed_ready():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


class EMATeacher:
    """A weight-EMA teacher of ``model`` with momentum ``momentum`` (ramped with ``ramp``).

    Never registered in the LightningModule: DDP and the optimizer must not see it, and the
    module's checkpoint must not carry it twice (its store checkpoints :attr:`module`).
    """

    def __init__(self, model: nn.Module, momentum: float, ramp: bool = True) -> None:
        # exclude_buffers: parameters are averaged, buffers copied (they describe the student's
        # current features, not weights). No stochastic rounding: a plain lerp in the weights'
        # own dtype, the arithmetic the suite's numbers were produced with.
        self.ema = ModelEmaV3(model, decay=momentum, exclude_buffers=True, stochastic_rounding=False)
        self.ema.module.requires_grad_(False)
        self.momentum, self.ramp = float(momentum), bool(ramp)

    @property
    def module(self) -> nn.Module:
        """The teacher network (in eval mode)."""
        return self.ema.module

    def update(self, student: nn.Module, step: int) -> None:
        """The ``step``-th EMA step towards ``student`` (1 = the first), buffers synced."""
        # ModelEmaV3.update uses its ``decay`` when no step is given: the ramp is ours.
        self.ema.decay = teacher_momentum_at(step, self.momentum, self.ramp)
        self.ema.update(student)
        broadcast_buffers_(self.module)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode, restoring every submodule's own mode afterwards.

    Restoring per submodule (not ``model.train()``) keeps a backbone frozen by the linear probe
    in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def forward_context(trainer: Any) -> contextlib.AbstractContextManager[Any]:
    """The precision plugin's autocast context (so the teacher runs at the training precision)."""
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    return plugin.forward_context() if plugin is not None else contextlib.nullcontext()
