"""State dicts in weight files and checkpoints: one reader, and one diff of two of them.

The reader takes what timm's own loader takes, and picks the same tensors (so the check made
before timm loads a file checks what timm will load): a ``.safetensors`` file, or a torch file
(``.pth``/``.pt``/``.bin``/``.ckpt``) holding a state dict or a dict that nests one under
``state_dict_ema``, ``model_ema``, ``state_dict`` or ``model`` (in that order, as timm), with the
wrappers' key prefixes (``module.``, ``_orig_mod.``) removed. The diff names the keys one state
dict lacks, the keys it has that the other does not, and the keys whose shapes differ; the
backbone's weight check and ``splml.eval``'s checkpoint check both read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

#: Where a checkpoint may nest its state dict, in the order timm's loader looks (EMA weights first).
NESTED_STATE_DICT_KEYS: Final[tuple[str, ...]] = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Key prefixes added by DDP and ``torch.compile`` wrappers.
WRAPPER_PREFIXES: Final[tuple[str, ...]] = ("_orig_mod.", "module.", "_orig_mod.")


class WeightsFileError(ValueError):
    """A weights file holds no state dict; the message names the file."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a weights file or checkpoint (see the module docstring).

    Torch files are memory-mapped (their tensors are read when used, not when loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        content = torch.load(path, map_location="cpu", weights_only=True)  # written in torch's legacy format
    return state_dict_of(content, path)


def state_dict_of(content: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside the loaded ``content`` of ``path`` (nested key and wrapper prefixes as timm)."""
    if isinstance(content, Mapping):
        nested = next((k for k in NESTED_STATE_DICT_KEYS if isinstance(content.get(k), Mapping)), None)
        if nested is not None:
            content = content[nested]
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        found = type(content).__name__ if not isinstance(content, Mapping) else f"a dict of {sorted(content)[:5]}"
        raise WeightsFileError(f"{path}: expected a state dict (names -> tensors), found {found}")
    return {_strip_wrappers(str(k)): v for k, v in content.items()}


def _strip_wrappers(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


@dataclass(frozen=True)
class StateDictDiff:
    """How ``found`` differs from ``expected``: keys it lacks, keys it adds, keys of another shape."""

    missing: list[str]
    unexpected: list[str]
    reshaped: list[str]

    @property
    def fits(self) -> bool:
        """True when ``found`` loads strictly into ``expected``."""
        return not (self.missing or self.unexpected or self.reshaped)


def diff_state_dicts(expected: Mapping[str, Any], found: Mapping[str, Any]) -> StateDictDiff:
    """Compare two state dicts (values: tensors, or anything with a ``shape``); key orders as in the inputs."""
    return StateDictDiff(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        reshaped=[k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)],
    )
