"""Base loss + gamma * term, the term switched on at a given epoch: AN/EN/EP/EPR with CL or SCL.

Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from Single-Label
Annotations*, WACV 2023: total = base + gamma * (CL or SCL), gamma in {0.1, 1}, with the term
switched on after the linear warm-up. A combination is not a class of its own but a YAML that
composes the two parts (``conf/loss/en_scl.yaml``: ``en`` as ``base``, ``term/scl`` as
``term``); Hydra instantiates both and hands them to :class:`CombinedLoss`. The combinations are
registered next to their term (:func:`splml.methods.registry.register_composition`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss


def _split(result: Tensor | dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, logs)`` from either return form of :meth:`SPMLLoss.forward`."""
    if isinstance(result, dict):
        return result["loss"], {k: v for k, v in result.items() if k != "loss"}
    return result, {}


class CombinedLoss(SPMLLoss):
    """``base + gamma * term``, the term active only when ``ctx.epoch >= start_epoch`` (0-based).

    Before ``start_epoch`` the term is not evaluated at all (its store may still be cold).
    Returns ``{"loss", "loss_base", "loss_term", <logs of base and term>}`` with detached parts.
    ``name`` is ``<base>_<term>`` unless given; ``requires_extras`` is the union of both parts'
    requirements and :meth:`callbacks` merges their stores.
    """

    def __init__(
        self, base: SPMLLoss, term: SPMLLoss, gamma: float = 1.0, start_epoch: int = 0, name: str | None = None
    ) -> None:
        super().__init__()
        if base.task != term.task:
            raise ValueError(
                f"cannot combine the {base.task} loss {base.name!r} with the {term.task} term {term.name!r}"
            )
        self.base = base
        self.term = term
        self.gamma = gamma
        self.start_epoch = start_epoch
        self.name = name or f"{base.name}_{term.name}"
        self.task = base.task
        self.requires_extras = tuple(dict.fromkeys(base.requires_extras + term.requires_extras))

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        """The stores of both parts; one store per type (EN and CL share the score store)."""
        merged: dict[type, Any] = {}
        for callback in self.base.callbacks(num_samples, num_classes) + self.term.callbacks(num_samples, num_classes):
            kind = type(callback)
            merged[kind] = merged[kind].merged_with(callback) if kind in merged else callback
        return list(merged.values())

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> dict[str, Tensor]:
        base_loss, logs = _split(self.base(outputs, batch, ctx))
        if ctx.epoch >= self.start_epoch:
            term_loss, term_logs = _split(self.term(outputs, batch, ctx))
            logs.update(term_logs)
            total = base_loss + self.gamma * term_loss
        else:
            term_loss = torch.zeros((), dtype=base_loss.dtype, device=base_loss.device)
            total = base_loss
        return {"loss": total, "loss_base": base_loss.detach(), "loss_term": term_loss.detach(), **logs}
