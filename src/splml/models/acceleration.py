"""How the network runs on its device (``model.*``): memory format and compilation, never what it computes.

* ``channels_last``: the 4-D weights are stored NHWC and every image entering the backbone is
  converted to that layout (a forward pre-hook), the layout that GPU convolutions under mixed
  precision run fastest in. Values are unchanged; parameter names and checkpoints too.
* ``compile``: the network is compiled in place (:meth:`torch.nn.Module.compile`), so its
  parameter names, its ``state_dict`` and every checkpoint stay those of the eager network (a
  checkpoint trained compiled evaluates eagerly and the other way round). Only the network is
  compiled: the losses and the per-sample stores run outside its forward and stay eager. A deep
  copy of the compiled network (AdaGC's EMA teacher) runs eagerly: the copy does not carry the
  compilation.

:func:`prepare_network` applies the run's ``model`` config node to the network of the
training module, for ``splml.train`` and ``splml.eval`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: The keys of the ``model`` config node.
OPTIONS = ("channels_last", "compile")


def channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: a 4-D image argument in channels-last memory format (other inputs untouched)."""
    if args and isinstance(args[0], Tensor) and args[0].ndim == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def use_channels_last(network: nn.Module) -> nn.Module:
    """Weights in channels-last format and the backbone's input converted to it (in place; returns ``network``).

    The hook sits on ``network.backbone`` when there is one (its input is always B x C x H x W,
    while a retrieval model may receive B x V x C x H x W views), else on ``network``.
    """
    network.to(memory_format=torch.channels_last)
    entrance = getattr(network, "backbone", network)
    entrance.register_forward_pre_hook(channels_last_input)
    return network


def compile_options(option: Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from the ``model.compile`` option (None = not compiled).

    ``false``/null: eager; ``true``: ``torch.compile``'s defaults (inductor); a mapping: its
    arguments (``backend``, ``mode``, ``dynamic``, ``fullgraph``, ``options``).
    """
    if option is None or option is False:
        return None
    if option is True:
        return {}
    if isinstance(option, Mapping):
        return dict(option)
    raise ValueError(
        f"model.compile must be true, false or a mapping of torch.compile arguments (e.g. {{mode: max-autotune}}), "
        f"got {option!r}"
    )


def prepare_network(network: nn.Module, options: Mapping[str, Any] | None) -> nn.Module:
    """Apply the run's ``model`` options (:data:`OPTIONS`) to ``network`` in place; returns it.

    ``options`` None (configs written before the node existed) leaves the network as it is. An
    unknown key is an error naming it.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not an option; the model node takes {', '.join(OPTIONS)}")
    if options.get("channels_last"):
        use_channels_last(network)
    compile_kwargs = compile_options(options.get("compile"))
    if compile_kwargs is not None:
        network.compile(**compile_kwargs)
    return network
