"""timm backbone factory: any timm model name, any number of input channels, no download."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)


def create_backbone(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    **timm_kwargs: object,
) -> nn.Module:
    """Build ``timm.create_model(name)`` without classifier and without pooling.

    The returned module maps ``B x in_chans x H x W`` to a feature map ``B x D x h x w`` and
    exposes ``num_features = D``. ``weights_path`` loads a local checkpoint (``.safetensors``,
    ``.pth``/``.pt``/``.bin``); its first convolution is adapted to ``in_chans`` with timm's rule
    and its classifier is dropped. ``pretrained=True`` without a file needs a download, which
    fails on an offline machine with a message that says what to do instead.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    if pretrained and weights_path is None:
        try:
            return timm.create_model(
                name, pretrained=True, num_classes=0, global_pool="", in_chans=in_chans, **timm_kwargs
            )
        except Exception as exc:  # hub errors come in many types (connection, HTTP, file)
            raise RuntimeError(
                f"backbone {name!r}: pretrained weights would have to be downloaded and that failed "
                f"({type(exc).__name__}: {exc}). Download them elsewhere and pass "
                "backbone.weights_path=/path/to/weights.safetensors, or set backbone.pretrained=false"
            ) from exc
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans, **timm_kwargs)
    if weights_path is not None:
        load_local_weights(model, Path(weights_path), in_chans=in_chans)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_local_weights(model: nn.Module, path: Path, in_chans: int) -> None:
    """Load a local timm-style state dict into ``model`` (classifier ignored, input conv adapted)."""
    from timm.models import adapt_input_conv

    state = _read_state_dict(path)
    first_conv = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    convs = first_conv if isinstance(first_conv, (list, tuple)) else [first_conv] if first_conv else []
    for conv in convs:
        key = f"{conv}.weight"
        if key in state and state[key].shape[1] != in_chans:
            state[key] = adapt_input_conv(in_chans, state[key])
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} backbone tensor(s) missing from the weights file "
            f"(first: {missing[:5]}); is it a checkpoint of the same architecture?"
        )
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    log.info("loaded backbone weights from %s", path)
