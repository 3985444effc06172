"""Where a method's identity lives: its ``loss=`` name, title, paper, formula, stores and task.

Every loss class registers its method where it is defined, with :func:`register_method`; the
combinations "base + gamma * term" (``en_scl``, ...) are registered next to their term with
:func:`register_composition`. Nothing else lists the methods: :func:`methods` imports every
module below :mod:`splml.methods` and returns what they registered, and from it

* the tests take the list of all losses and check that every method has its YAML
  (``conf/loss/<name>.yaml``; a term's in ``conf/loss/term/``) and every YAML is a method;
* ``python docs/make_methods_table.py`` writes the README's methods table (:func:`methods_table`,
  checked by a test);
* the method comparison sweep (``experiments/methods/run_quality.py``) takes the methods
  registered with ``comparison=True``.

A :class:`Method` holds what a documentation page of the method needs: its title, summary,
formula and paper, its options (the YAML named by :attr:`Method.config`, composed with its parts
by ``splml.builders.loss_config(name)``), its stores and whether it is a reconstruction.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from splml.methods.papers import Paper

#: What a registered method is: a loss of its own, a term that only exists inside a composition
#: (``cl``, ``scl``), or a composition ``base + gamma * term``.
KINDS = ("loss", "term", "composition")

LossClass = TypeVar("LossClass", bound=type)


@dataclass(frozen=True)
class Method:
    """One method of the suite, as registered by its module."""

    #: The ``loss=`` option and the loss name recorded in results (``en_scl``).
    name: str
    #: Short display name (``EN + SCL``).
    title: str
    #: What the method does, in one line.
    summary: str
    #: Where it comes from (``str(paper)``: authors, title, venue and year; ``paper.short`` for tables).
    paper: Paper
    #: The objective in short text or LaTeX-like notation.
    formula: str
    #: The loss class (:class:`~splml.methods.combined.CombinedLoss` for a composition).
    loss: type
    kind: str = "loss"
    #: ``classification`` (reads logits) or ``retrieval`` (reads embeddings): the ``task=`` it trains.
    task: str = "classification"
    #: Classes of the per-sample store callbacks the loss declares (empty: a stateless loss).
    stores: tuple[type, ...] = ()
    #: For a composition, the names of its base and its term.
    parts: tuple[str, ...] = ()
    #: Whether the synthetic method comparison (``experiments/methods/run_quality.py``) sweeps it.
    comparison: bool = False
    #: ``ablation=`` options (``conf/ablation/``) that switch off a part of this method.
    ablations: tuple[str, ...] = ()
    #: Rebuilt from a description because the authors' code was not available.
    reconstruction: bool = False

    @property
    def config(self) -> str:
        """Its YAML, relative to the config folder (``loss/en_scl.yaml``, ``loss/term/scl.yaml``)."""
        return f"loss/term/{self.name}.yaml" if self.kind == "term" else f"loss/{self.name}.yaml"

    @property
    def has_store(self) -> bool:
        return bool(self.stores)

    @property
    def selectable(self) -> bool:
        """Whether ``loss=<name>`` trains it (a term only trains inside a composition)."""
        return self.kind != "term"


_REGISTRY: dict[str, Method] = {}
#: Compositions are resolved once every module is imported (their parts may register later).
_COMPOSITIONS: dict[str, dict[str, Any]] = {}


def _add(name: str) -> None:
    if name in _REGISTRY or name in _COMPOSITIONS:
        raise ValueError(f"method {name!r} is registered twice")


def register_method(
    name: str,
    *,
    title: str,
    summary: str,
    paper: Paper,
    formula: str,
    stores: Sequence[type] = (),
    term: bool = False,
    comparison: bool = False,
    ablations: Sequence[str] = (),
    reconstruction: bool = False,
) -> Callable[[LossClass], LossClass]:
    """Class decorator registering the loss class as the method ``name`` (its ``name`` attribute).

    ``term=True`` registers a term that is only trained inside a composition (its YAML lives in
    ``conf/loss/term/``). The task comes from the class's ``task`` attribute.
    """

    def decorate(cls: LossClass) -> LossClass:
        if getattr(cls, "name", None) != name:
            raise ValueError(f"{cls.__qualname__}.name is {getattr(cls, 'name', None)!r}, registered as {name!r}")
        _add(name)
        _REGISTRY[name] = Method(
            name=name, title=title, summary=summary, paper=paper, formula=formula, loss=cls,
            kind="term" if term else "loss", task=str(getattr(cls, "task", "classification")), stores=tuple(stores),
            comparison=comparison, ablations=tuple(ablations), reconstruction=reconstruction,
        )  # fmt: skip
        return cls

    return decorate


def register_composition(base: str, term: str, *, comparison: bool = False) -> None:
    """Register ``<base>_<term>``: ``base + gamma * term`` (``conf/loss/<base>_<term>.yaml``).

    Title, paper, formula and stores are those of its parts (the term's paper, which introduced
    the combination).
    """
    name = f"{base}_{term}"
    _add(name)
    _COMPOSITIONS[name] = {"parts": (base, term), "comparison": comparison}


def _compose(name: str, parts: tuple[str, str], comparison: bool) -> Method:
    from splml.methods.combined import CombinedLoss

    missing = [p for p in parts if p not in _REGISTRY]
    if missing:
        raise ValueError(f"composition {name!r} names unregistered methods {missing}")
    base, term = (_REGISTRY[p] for p in parts)
    if term.kind != "term" or base.kind != "loss":
        raise ValueError(
            f"composition {name!r} needs a loss and a term, got {base.kind} {base.name!r}, {term.kind} {term.name!r}"
        )
    return Method(
        name=name, title=f"{base.title} + {term.title}", summary=f"{base.title} plus gamma x {term.summary}",
        paper=term.paper, formula=f"L_{{{base.title}}} + gamma * L_{{{term.title}}}  (the term from start_epoch on)",
        loss=CombinedLoss, kind="composition", task=base.task, stores=tuple(dict.fromkeys(base.stores + term.stores)),
        parts=parts, comparison=comparison, reconstruction=base.reconstruction or term.reconstruction,
    )  # fmt: skip


def discover() -> None:
    """Import every module below :mod:`splml.methods`, so that every method is registered."""
    import splml.methods as package

    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        importlib.import_module(info.name)


def methods() -> dict[str, Method]:
    """Every registered method by name (losses, terms and compositions), in name order."""
    discover()
    found = dict(_REGISTRY)
    for name, spec in _COMPOSITIONS.items():
        found[name] = _compose(name, spec["parts"], spec["comparison"])
    return dict(sorted(found.items()))


def method(name: str) -> Method:
    """The method registered as ``name``; a KeyError lists the known ones."""
    found = methods()
    if name not in found:
        raise KeyError(f"no method {name!r} is registered; known: {', '.join(found)}")
    return found[name]


def loss_names(task: str | None = None, *, comparison: bool | None = None) -> list[str]:
    """The ``loss=`` options (terms excluded), optionally of one task or of the comparison sweep."""
    return [
        m.name for m in methods().values()
        if m.selectable and (task is None or m.task == task) and (comparison is None or m.comparison == comparison)
    ]  # fmt: skip


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip().rstrip(".") if lines else ""


def methods_table() -> str:
    """The README's methods table (Markdown), one row per ``loss=`` option."""
    rows = ["| `loss=` | method | paper | per-sample store (callback) |", "|---|---|---|---|"]
    for m in methods().values():
        if not m.selectable:
            continue
        stores = "; ".join(f"`{s.__name__}`: {_first_line(s.__doc__)}" for s in m.stores) or "–"
        note = " (reconstruction)" if m.reconstruction else ""
        task = "" if m.task == "classification" else f" [task={m.task}]"
        rows.append(f"| `{m.name}` | **{m.title}**{note}{task}: {m.summary} | {m.paper.short} | {stores} |")
    return "\n".join(rows) + "\n"
