"""Where the Hydra config tree is, where a run writes by default, and what the configs resolve with.

Imported by every command before Hydra parses its arguments, so it stays light: no torch, no
Lightning (``splml-train --help`` answers in about a second). The configs are found in this
order: ``SPLML_CONFIG_DIR``; the copy shipped inside the installed package (``splml/conf``, put
there by the wheel build from the repository's ``conf/``); the repository's ``conf/`` when the
package runs from a source checkout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: Overrides the config tree (a copy to edit, say).
CONFIG_DIR_ENV = "SPLML_CONFIG_DIR"
#: Overrides the folder that logs, data and cache default to (``paths.root_dir``).
ROOT_DIR_ENV = "SPLML_ROOT_DIR"

_PACKAGE_DIR = Path(__file__).resolve().parent

#: The config groups whose choice identifies a run (recorded in results.json and logger tags).
CHOICE_GROUPS = ("task", "dataset", "labels", "loss", "backbone", "head", "trainer", "logger", "experiment", "ablation")


def project_root() -> Path:
    """The source checkout's root (the parent of ``src/``); only meaningful when :func:`is_source_checkout`."""
    return _PACKAGE_DIR.parents[1]


def packaged_config_dir() -> Path:
    """Where an installed wheel holds the configs (copied from ``conf/`` when the wheel is built)."""
    return _PACKAGE_DIR / "conf"


def is_source_checkout() -> bool:
    """True when the package runs from a repository (``<root>/src/splml`` beside ``<root>/conf``), editable installs included."""
    return _PACKAGE_DIR.parent.name == "src" and (project_root() / "conf" / "train.yaml").is_file()


def config_dir() -> Path:
    """The Hydra config tree: ``SPLML_CONFIG_DIR``, else the installed package's copy, else the checkout's ``conf/``."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).resolve()
    packaged = packaged_config_dir()
    if (packaged / "train.yaml").is_file():
        return packaged
    return project_root() / "conf"


def default_root_dir() -> Path:
    """What ``paths.root_dir`` defaults to: the checkout's root in a repository, else the working directory.

    Logs, the data folder and the synthetic cache live below it, so an installed copy writes where
    it is run from, never into site-packages. ``SPLML_ROOT_DIR`` (and ``SPLML_LOG_DIR``,
    ``SPLML_DATA_DIR``, ``SPLML_CACHE_DIR`` for each folder) override it.
    """
    if os.environ.get(ROOT_DIR_ENV):
        return Path(os.environ[ROOT_DIR_ENV]).resolve()
    return project_root() if is_source_checkout() else Path.cwd()


def register_resolvers() -> None:
    """OmegaConf resolvers used by the config tree, and the structured config schemas (idempotent)."""
    from splml.runs import job_dir_name
    from splml.schema import register_schemas
    from splml.utils.naming import method_name

    resolvers = {
        "splml_root": lambda: str(default_root_dir()),
        "splml_tags": _flatten_tags,
        "splml_method": method_name,
        "splml_mkdir": _mkdir,
        "splml_job_dir": job_dir_name,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    register_schemas()


def _mkdir(path: str) -> str:
    """Create ``path`` (for files whose writers do not create folders, like SQLite) and return it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return str(path)


def _flatten_tags(*parts: Any) -> list[str]:
    """Logger tags from group choices and the user's ``tags`` list, without empties or repeats."""
    out: list[str] = []
    for part in parts:
        items = list(part) if isinstance(part, (list, tuple)) or OmegaConf.is_list(part) else [part]
        for item in items:
            if item not in (None, "") and str(item) not in out:
                out.append(str(item))
    return out


# -- the commands' --help -----------------------------------------------------------------------------
#: Config folders that are not choices a user makes on the command line.
_NOT_USER_GROUPS = ("hydra",)


def config_groups(root: Path | None = None) -> dict[str, list[str]]:
    """Every config group of the tree (``loss``, ``optim/optimizer``, ...) with its options, from the files."""
    root = root or config_dir()
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        name = folder.relative_to(root).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and name.split("/")[0] not in _NOT_USER_GROUPS:
            groups[name] = options
    return groups


def answer_help(
    config_name: str,
    prog: str,
    summary: str,
    argv: list[str] | None = None,
    epilogue: Callable[[Any, list[str]], str] | None = None,
) -> bool:
    """Print the command's help and return True when ``--help``/``-h`` is asked for; else False.

    Hydra's own ``--help`` lists the groups by composing the config once per group and option
    (seconds for this tree); this reads the group folders and composes once, with the command
    line's overrides, so the answer comes in about a second. ``--hydra-help`` still gives Hydra's.
    ``epilogue(cfg, overrides)`` adds a command's own text after the config (say, what to run next
    with the options given).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--help", "-h") for a in args):
        return False
    from hydra import compose, initialize_config_dir

    overrides = [a for a in args if not a.startswith("-")]
    register_resolvers()
    lines = [
        f"{prog}: {summary}",
        "",
        f"Usage: {prog} [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]",
        f'Tab completion (bash): eval "$({prog} -sc install=bash)"',
        "",
        "== Config groups (group=option) ==",
    ]
    lines += [f"{group}: {', '.join(options)}" for group, options in config_groups().items()]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    lines += ["", f"== Config ({config_dir() / config_name}.yaml and the overrides; key=value changes any) ==", ""]
    text = "\n".join(lines) + "\n" + OmegaConf.to_yaml(cfg)
    if epilogue is not None:
        text += "\n" + epilogue(cfg, overrides).rstrip("\n") + "\n"
    print(text, end="")
    return True
