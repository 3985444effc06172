"""timm backbone factory: any timm model name, any number of input channels, no download.

Local weights are loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``: its reader,
its adaptation of the first convolution to ``in_chans`` with ``adapt_input_conv``, its removal
of the classifier). What this module adds is a thin wrapper of checks made before, so that a
file that cannot fit fails with a message naming the file and the layers, not with timm's
partial load (timm loads non-strictly once it has dropped the classifier, so a missing layer
would otherwise stay randomly initialised without a word).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from splml.io.weights import diff_state_dicts, read_state_dict

log = logging.getLogger(__name__)

_BACKBONE = {"num_classes": 0, "global_pool": ""}


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
    ``.pth``/``.pt``/``.bin``) through timm; its first convolution is adapted to ``in_chans``
    with timm's rule and its classifier is dropped. ``pretrained=True`` without a file needs a
    download, which fails on an offline machine with a message that says what to do instead.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    if weights_path is not None:
        path = Path(weights_path)
        check_local_weights(name, path, in_chans, **timm_kwargs)
        # source="" keeps timm from preferring a hub copy for models whose registry names one.
        overlay = {"file": str(path), "source": ""}
        try:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=in_chans, **_BACKBONE, **timm_kwargs
            )
        except RuntimeError as exc:  # a stem timm cannot adapt, a load that fails after all
            raise ValueError(f"{path}: timm could not load these weights into {name!r} ({exc})") from exc
        log.info("loaded backbone weights from %s", path)
        return model
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, in_chans=in_chans, **_BACKBONE, **timm_kwargs)
        except Exception as exc:  # hub errors come in many types (connection, HTTP, file)
            raise RuntimeError(
                f"backbone {name!r}: pretrained weights would have to be downloaded and that failed "
                f"({type(exc).__name__}: {exc}). Download them elsewhere and pass "
                "backbone.weights_path=/path/to/weights.safetensors, or set backbone.pretrained=false"
            ) from exc
    return timm.create_model(name, pretrained=False, in_chans=in_chans, **_BACKBONE, **timm_kwargs)


def check_local_weights(name: str, path: Path, in_chans: int, **timm_kwargs: object) -> None:
    """Raise a clear error unless the weights file ``path`` fits backbone ``name`` with ``in_chans`` inputs.

    Every tensor of the backbone must be in the file with the backbone's shape, except the
    input channels of the first convolution (timm adapts them). Tensors the backbone does not
    have (the classifier) are ignored, as timm ignores them. The model whose shapes are compared
    is built on the ``meta`` device (no memory, no initialisation) and without touching the
    random state, so the model built next draws exactly what it would have drawn.
    """
    state = read_state_dict(path)
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, in_chans=in_chans, **_BACKBONE, **timm_kwargs)
        except Exception:  # noqa: BLE001 -- a model whose construction reads tensor values: build it for real
            model = timm.create_model(name, pretrained=False, in_chans=in_chans, **_BACKBONE, **timm_kwargs)
    own = model.state_dict()
    first_conv = model.pretrained_cfg.get("first_conv")
    convs = first_conv if isinstance(first_conv, (list, tuple)) else [first_conv] if first_conv else []
    adapted = {f"{conv}.weight" for conv in convs}
    diff = diff_state_dicts(own, state)
    if diff.missing:
        raise ValueError(
            f"{path}: {len(diff.missing)} backbone tensor(s) missing from the weights file "
            f"(first: {diff.missing[:5]}); is it a checkpoint of the same architecture?"
        )
    wrong = [k for k in diff.reshaped if not (k in adapted and _same_but_channels(state[k], own[k]))]
    if wrong:
        shapes = "; ".join(f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in wrong[:5])
        raise ValueError(f"{path}: shape mismatch for {wrong[:5]} ({shapes})")


def _same_but_channels(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """A convolution weight that differs from the model's in its input channels only (O x I x kh x kw)."""
    return (
        found.ndim == expected.ndim == 4
        and found.shape[0] == expected.shape[0]
        and found.shape[2:] == expected.shape[2:]
    )
