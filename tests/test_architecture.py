"""The package's shape: levels that only import downwards, no import cycles, small files.

Every module under ``src/splml`` is parsed (imports inside functions included, since a lazy
import is still a dependency) and placed on one level, from the top:

    entry points (train, eval, predict, export, report, annotate, Hydra hooks, the package's facade)
    > module (LightningModules, builders, checkpoint loading, config schemas and checks, run callbacks)
    > methods (the losses of splml.methods)
    > stores (the store base, each method's store and the parts a store is made of)
    > base (data, models, utils, metrics, run folders, loggers) > io (the file formats)

A module may import its own level or a lower one, never a higher one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "splml"

#: Levels from the top; a module is on the first level one of whose patterns matches its whole name.
LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # ``splml`` itself is the public facade: ``splml.load_model`` reaches into the module level (lazily).
    (
        "entry points",
        (r"splml", r"splml\.(train|eval|predict|export|report|hydra_callbacks)", r"splml\.annotate(\..+)?"),
    ),
    (
        "module",
        (
            r"splml\.(module|retrieval_module|builders|inference|config|schema|config_checks)",
            r"splml\.callbacks(\..+)?",
        ),
    ),
    (
        "stores",
        (
            r"splml\.methods\.store",
            r"splml\.methods\.\w+\.store",
            # the parts a store is made of, and the callbacks a method declares beside its store
            r"splml\.methods\.scl\.(geometry|storage|figures)",
            r"splml\.methods\.adagc\.(indicator|detection|rollback|figures|switch|teacher|mixup)",
        ),
    ),
    ("methods", (r"splml\.methods(\..+)?",)),
    (
        "base",
        (
            r"splml\.(data|models|utils)(\..+)?",
            r"splml\.(metrics|retrieval_metrics|retrieval_grid|runs|loggers|optim|version|provenance|thresholds)",
        ),
    ),
    # One owner per on-disk format: the readers and writers depend on nothing else of the package.
    ("io", (r"splml\.io(\..+)?",)),
)
#: Rank of each level: higher imports lower. ("stores" is matched before "methods" but ranks below it.)
RANK = {"entry points": 5, "module": 4, "methods": 3, "stores": 2, "base": 1, "io": 0}

#: No file in src/ may exceed this many lines.
MAX_LINES = 500
#: callbacks/ holds run infrastructure only (checkpoints, experiment log, label-quality figure).
MAX_CALLBACKS_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def level(module: str) -> str:
    for name, patterns in LEVELS:
        if any(re.fullmatch(pattern, module) for pattern in patterns):
            return name
    raise KeyError(module)


def imported_modules(module: str) -> Iterator[tuple[str, int]]:
    """``(splml module, line)`` of every import in ``module``, anywhere in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a import b`` depends on the module a.b when there is one, else on a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rpartition(".")[0]
            if name in MODULES and name != module:
                yield name, node.lineno


GRAPH = {module: sorted({target for target, _ in imported_modules(module)}) for module in MODULES}


def test_every_module_has_a_level():
    unplaced = []
    for module in MODULES:
        try:
            level(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules on a level in tests/test_architecture.py (LEVELS): {unplaced}"


def test_no_module_imports_a_higher_level():
    upward = [
        f"{MODULES[module].relative_to(SRC)}:{line} ({level(module)}) imports {target} ({level(target)})"
        for module in MODULES
        for target, line in imported_modules(module)
        if RANK[level(target)] > RANK[level(module)]
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_callbacks_and_methods_never_import_the_report():
    offenders = [
        f"{module} imports splml.report"
        for module in MODULES
        if module.startswith(("splml.callbacks", "splml.methods")) and "splml.report" in GRAPH[module]
    ]
    assert not offenders, offenders


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components with more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert strongly_connected(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a two-module cycle and a three-module one are found."""
    graph = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["e"], "e": ["c"], "f": ["a"]}
    assert sorted(strongly_connected(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_a_lazy_import_counts():
    """Imports inside functions are dependencies too (the layering forbids lazy upward imports)."""
    assert level("splml.methods.scl.store") == "stores" and level("splml.methods.scl.loss") == "methods"
    assert "splml.methods.base" in GRAPH["splml.methods.an"]
    lazy = [t for t, _ in imported_modules("splml.config") if t == "splml.runs"]
    assert lazy, "register_resolvers imports splml.runs inside a function"


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_callbacks_hold_only_run_infrastructure():
    total = sum(line_count(p) for p in (PACKAGE / "callbacks").glob("*.py"))
    assert total < MAX_CALLBACKS_LINES, f"callbacks/ has {total} lines (method stores belong in splml.methods)"


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(SRC)): line_count(p) for p in MODULES.values()}
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}
