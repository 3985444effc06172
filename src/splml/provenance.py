"""Where a result came from: library versions, the code's git state, the machine and the trainer settings.

``results.json`` carries it as ``provenance``, so a number can be traced to the code and the
settings that produced it without the run's logs.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from splml.version import __version__

#: Libraries whose versions change results (imported by then: reading them costs nothing).
LIBRARIES = ("torch", "lightning", "timm", "torchmetrics")


def library_versions() -> dict[str, str | None]:
    """``{"splml": ..., "torch": ..., ...}``; None for a library that cannot be imported."""
    import importlib

    versions: dict[str, str | None] = {"splml": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_state(folder: Path) -> dict[str, Any] | None:
    """``{"commit": <sha>, "dirty": <tracked files changed>}`` of the git checkout holding ``folder``; None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed package)
        return None
    return {"commit": commit, "dirty": dirty}


def device_name(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: the device a run computed on."""
    text = str(device)
    if text.startswith("cuda"):
        import torch

        try:
            return f"{text} ({torch.cuda.get_device_name(device)})"
        except (RuntimeError, AssertionError):  # no CUDA runtime where the record is written
            return text
    return text


def run_provenance(
    *, code_dir: Path | None, device: Any, precision: str, trainer: dict[str, Any], world_size: int = 1
) -> dict[str, Any]:
    """The ``provenance`` block of ``results.json``.

    ``code_dir`` is the source checkout the package runs from (None for an installed copy: no git
    state); ``trainer`` the resolved ``trainer`` config node.
    """
    return {
        "versions": library_versions(),
        "git": git_state(code_dir) if code_dir is not None else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device_name(device),
        "world_size": int(world_size),
        "precision": str(precision),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "trainer": trainer,
    }
