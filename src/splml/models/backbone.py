"""timm backbone factory: any timm model name, any number of input channels, no download.

Every backbone maps ``B x C x H x W`` to a spatial feature map ``B x D x h x w``, which the heads
(and the spatial methods: class score maps, SCL heatmaps, BoostLU, Query2Label) read:

* CNNs (ResNet, ConvNeXt, EfficientNet, MobileNet, ...) give one from their unpooled head
  (``global_pool=""``), as before;
* models whose features are tokens (ViT, DeiT, BEiT, EVA: ``B x N x D`` with class tokens) or
  channels-last (Swin, MambaOut: ``B x h x w x D``) are wrapped in :class:`TokenGridBackbone`,
  which takes the last feature map of timm's ``forward_intermediates`` (normalised, NCHW, prefix
  tokens dropped): the token grid.

Models with a fixed input size (``pretrained_cfg.fixed_input_size``: ViT, Swin, ...) are built
for the run's ``image_size`` (their position embeddings and windows follow it). The width ``D``
is measured on one input of that size, so a head always gets the channels it will be fed.

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


class TokenGridBackbone(nn.Module):
    """A timm model whose features are tokens or channels-last, giving its last feature map as ``B x D x h x w``.

    Through timm's ``forward_intermediates(indices=1, norm=True, output_fmt="NCHW")``: the last
    block's output after the final norm, prefix (class, register) tokens dropped, the patch
    tokens laid out on their grid. The timm model is ``self.model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features = int(model.num_features)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(
            image, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )[-1]


def feature_width(backbone: nn.Module) -> int:
    """``D``, the channels of the feature map the backbone gives (``feature_channels``, else ``num_features``)."""
    width = getattr(backbone, "feature_channels", None) or getattr(backbone, "num_features", None)
    if width is None:
        raise ValueError(f"{type(backbone).__name__} does not say its feature width (num_features)")
    return int(width)


def create_backbone(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    image_size: int | None = None,
    **timm_kwargs: object,
) -> nn.Module:
    """Build ``timm.create_model(name)`` without classifier and without pooling, as a spatial backbone.

    The returned module maps ``B x in_chans x S x S`` (``S = image_size``) to a feature map
    ``B x D x h x w`` and exposes ``feature_channels = D`` (see the module docstring).
    ``weights_path`` loads a local checkpoint (``.safetensors``, ``.pth``/``.pt``/``.bin``)
    through timm; its first convolution is adapted to ``in_chans`` with timm's rule and its
    classifier is dropped. ``pretrained=True`` without a file needs a download, which fails on an
    offline machine with a message that says what to do instead.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    if image_size is not None and "img_size" not in timm_kwargs and _fixed_input_size(name):
        timm_kwargs = {**timm_kwargs, "img_size": int(image_size)}
    model = _create_timm_model(name, in_chans, pretrained, weights_path, **timm_kwargs)
    return spatial_backbone(model, in_chans, image_size)


def _fixed_input_size(name: str) -> bool:
    """Whether the model is built for one input size (ViT, Swin, ...): it then needs ``img_size``."""
    try:
        return bool(getattr(timm.get_pretrained_cfg(name), "fixed_input_size", False))
    except Exception:  # noqa: BLE001 - a name without a registered default config: timm's defaults apply
        return False


def spatial_backbone(model: nn.Module, in_chans: int, image_size: int | None) -> nn.Module:
    """``model`` (a timm model built without classifier and pooling) as a backbone that gives ``B x D x h x w``.

    Token and channels-last models are wrapped (:class:`TokenGridBackbone`); a model whose own
    output is already a NCHW map is returned as it is (its weights keep their names). Either way
    ``feature_channels`` is set to the measured ``D``.
    """
    size = int(image_size or (getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (0, 224, 224))[-1])
    tokens = getattr(model, "num_prefix_tokens", None) is not None or getattr(model, "output_fmt", "NCHW") != "NCHW"
    backbone = TokenGridBackbone(model) if tokens else model
    shape = _probe(backbone, in_chans, size)
    if len(shape) != 4 and not tokens:  # tokens from a model that did not say so
        backbone = TokenGridBackbone(model)
        shape = _probe(backbone, in_chans, size)
    if len(shape) != 4:
        raise ValueError(
            f"backbone {type(model).__name__} gives a {len(shape)}-D output {tuple(shape)} for a {size} px input, and "
            "timm's forward_intermediates did not give a feature map either: the spatial heads need B x D x h x w"
        )
    backbone.feature_channels = int(shape[1])
    return backbone


def _probe(backbone: nn.Module, in_chans: int, size: int) -> torch.Size:
    """The output shape for one ``size`` x ``size`` input (eval mode, no gradient, the random state untouched)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return backbone(torch.zeros(1, in_chans, size, size)).shape
    finally:
        backbone.train(was_training)


def _create_timm_model(
    name: str, in_chans: int, pretrained: bool, weights_path: str | Path | None, **timm_kwargs: object
) -> nn.Module:
    """The timm model without classifier and pooling: from a local file, downloaded, or freshly initialised."""
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
    # timm adapts the first convolution to in_chans and resamples position embeddings (and relative
    # position tables) to the model's image size when it loads a file: those may differ here.
    wrong = [
        k for k in diff.reshaped
        if not (k in adapted and _same_but_channels(state[k], own[k])) and not _resampled_by_timm(k)
    ]  # fmt: skip
    if wrong:
        shapes = "; ".join(f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in wrong[:5])
        raise ValueError(f"{path}: shape mismatch for {wrong[:5]} ({shapes})")


def _resampled_by_timm(key: str) -> bool:
    """Position embeddings and relative-position tables, which timm resizes to the model's grid on loading."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf in ("pos_embed", "relative_position_bias_table", "relative_position_index")


def _same_but_channels(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """A convolution weight that differs from the model's in its input channels only (O x I x kh x kw)."""
    return (
        found.ndim == expected.ndim == 4
        and found.shape[0] == expected.shape[0]
        and found.shape[2:] == expected.shape[2:]
    )
