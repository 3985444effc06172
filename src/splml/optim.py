"""Optimiser and learning-rate schedule of a run: factories that Hydra ``_partial_`` nodes build.

``optim.optimizer`` (config group ``optim/optimizer``) is any callable that turns parameter
groups into an optimiser: a ``torch.optim`` class, a timm optimiser class or
``timm.optim.create_optimizer_v2`` (``opt: lamb``, ...), written as a ``_partial_`` node. The
training module calls it on two named groups, ``backbone`` at ``optim.lr`` and ``head`` at
``optim.lr * optim.head_lr_mult``; the names label the learning-rate monitor's curves.

``optim.scheduler`` (group ``optim/scheduler``) is called on that optimiser: a ``torch.optim``
scheduler (stepped once per epoch, Lightning's default), :func:`linear_probe_warmup_cosine`
below, or ``null`` for a constant rate. A factory with a ``run_length`` parameter receives the
trainer's :class:`RunLength`, which exists only once the trainer knows the data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: ``optimizer(parameter_groups)`` -> the optimiser (a ``_partial_`` node of ``optim.optimizer``).
OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
#: ``scheduler(optimizer)`` -> a scheduler or Lightning's scheduler dict (``optim.scheduler``).
SchedulerFactory = Callable[..., Any]


@dataclass(frozen=True)
class RunLength:
    """How long the run is in optimiser steps, for schedules defined in epochs."""

    total_steps: int
    steps_per_epoch: int

    @classmethod
    def of_trainer(cls, estimated_stepping_batches: float, max_epochs: int | None) -> RunLength:
        """From Lightning's ``trainer.estimated_stepping_batches`` and ``trainer.max_epochs``."""
        total = max(1, int(estimated_stepping_batches))
        return cls(total_steps=total, steps_per_epoch=max(1, total // max(1, max_epochs or 1)))


def build_scheduler(factory: SchedulerFactory, optimizer: torch.optim.Optimizer, run_length: RunLength) -> Any:
    """``factory(optimizer)``, plus ``run_length=`` when the factory declares that parameter."""
    if "run_length" in inspect.signature(factory).parameters:
        return factory(optimizer, run_length=run_length)
    return factory(optimizer)


def linear_probe_warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    run_length: RunLength,
    lr: float,
    warmup_epochs: int = 0,
    linear_probe_epochs: int = 0,
    linear_probe_lr: float | None = None,
    frozen_groups: Iterable[str] = ("backbone",),
) -> dict[str, Any]:
    """Linear probe, then linear warm-up and cosine decay to 0, per optimiser step.

    The "linear init" of the SPML papers: for the first ``linear_probe_epochs`` the groups named
    in ``frozen_groups`` get rate 0 (the module also freezes their weights and BN statistics)
    while every other group runs at ``linear_probe_lr / lr`` times its own rate (so a head rate
    multiplier still applies; ``linear_probe_lr`` null = ``lr``). Over the remaining steps every
    group warms up linearly for ``warmup_epochs`` and then follows a half cosine to 0.

    Returns Lightning's scheduler dict (``interval: step``).
    """
    total = run_length.total_steps
    probe = min(total - 1, linear_probe_epochs * run_length.steps_per_epoch)
    warmup = min(total - probe - 1, warmup_epochs * run_length.steps_per_epoch)
    probe_lr = float(linear_probe_lr) if linear_probe_lr is not None else lr

    def fine_tune(step: int) -> float:
        # Linear warm-up then cosine decay over the steps after the linear probe.
        step -= probe
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - probe - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def frozen_factor(step: int) -> float:
        return 0.0 if step < probe else fine_tune(step)

    def probed_factor(step: int) -> float:
        return probe_lr / lr if step < probe else fine_tune(step)

    frozen = set(frozen_groups)
    factors = [frozen_factor if group.get("name") in frozen else probed_factor for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    return {"scheduler": scheduler, "interval": "step"}


def named_parameter_groups(
    backbone: Sequence[torch.nn.Parameter], head: Sequence[torch.nn.Parameter], lr: float, head_lr_mult: float
) -> list[dict[str, Any]]:
    """The two groups every optimiser of the suite trains: ``backbone`` at ``lr``, ``head`` at ``lr * head_lr_mult``."""
    return [
        {"name": "backbone", "params": list(backbone), "lr": lr},
        {"name": "head", "params": list(head), "lr": lr * head_lr_mult},
    ]
