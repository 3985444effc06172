"""A trained model back from its checkpoint alone: ``splml.load_model(ckpt)``.

The checkpoint holds the run's resolved config and its data spec (:class:`splml.io.checkpoint.DataSpec`:
classes, bands, normalisation, image size); the module is rebuilt from them exactly as training
built it, with no dataset on disk, and the weights are loaded strictly. Checkpoints written
before the data spec was recorded get theirs from the stored datamodule config (the datamodule is
constructed, not set up, so nothing is read). Weights that do not fit the model the config builds
are a :class:`CheckpointMismatchError` naming the checkpoint, the first differing keys and
shapes, and what would fit (also what ``splml.eval`` reports).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splml.builders import build_data_spec, build_module, without_initial_weights
from splml.data.labels import FullLabels
from splml.io.checkpoint import DataSpec, load_checkpoint, read_data_spec, stored_run_config
from splml.io.reben.format import BAND_SETS
from splml.io.weights import diff_state_dicts, state_dict_of


def load_run_config(ckpt_path: Path) -> tuple[DictConfig, dict[str, Any]]:
    """The training config stored in a splml checkpoint, and the checkpoint itself (memory-mapped)."""
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = load_checkpoint(Path(ckpt_path))
    return OmegaConf.create(stored_run_config(ckpt, Path(ckpt_path))), ckpt


def checkpoint_data_spec(run_cfg: DictConfig, ckpt: Mapping[str, Any], ckpt_path: Path) -> DataSpec:
    """The checkpoint's data spec; for older checkpoints, the one its stored datamodule config describes."""
    spec = read_data_spec(ckpt, where=str(ckpt_path))
    if spec is not None:
        return spec
    datamodule = instantiate(run_cfg.dataset.datamodule, labels=FullLabels(), _convert_="all")
    return build_data_spec(run_cfg, datamodule)


def load_model(
    checkpoint: str | Path, *, map_location: str | torch.device = "cpu", strict: bool = True
) -> L.LightningModule:
    """The LightningModule of a splml checkpoint, in eval mode, on ``map_location``.

    Classification modules (``SPMLModule``) give probabilities with ``predict_step({"image": x})``
    or ``module(x)["logits"].sigmoid()``; retrieval modules an embedding. ``module.data_spec`` says
    what ``x`` must be (bands in order, normalisation, image size) and what the outputs are
    (``class_names`` in order); :func:`splml.data.datasets.files.read_input` prepares a file that way.
    """
    ckpt_path = Path(checkpoint).expanduser().resolve()
    run_cfg, ckpt = load_run_config(ckpt_path)
    spec = checkpoint_data_spec(run_cfg, ckpt, ckpt_path)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's random state alone
        module = build_module(without_initial_weights(run_cfg), spec)
    weights = state_dict_of(ckpt, ckpt_path)  # the "state_dict" entry, read as any weights file
    if strict:
        check_weights_fit(
            module.state_dict(), weights, ckpt_path=ckpt_path, run_cfg=run_cfg,
            stored_datamodule=run_cfg.dataset.datamodule, num_channels=spec.num_channels, num_classes=spec.num_classes,
        )  # fmt: skip
    module.load_state_dict(weights, strict=strict)
    module.data_spec = spec
    module.run_config = OmegaConf.to_container(run_cfg, resolve=True)
    return module.to(map_location).eval()


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model that its (possibly overridden) config builds."""


#: How many differing keys of each kind an error lists.
_MAX_KEYS = 5


def check_weights_fit(
    model_state: Mapping[str, torch.Tensor],
    ckpt_state: Mapping[str, torch.Tensor],
    *,
    ckpt_path: Path,
    run_cfg: DictConfig,
    stored_datamodule: DictConfig,
    num_channels: int,
    num_classes: int,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt_state`` loads strictly into ``model_state``.

    The message names the first missing, unexpected and differently shaped keys, reads from the
    weights the input channels and classes they were trained for, and names the
    ``dataset_overrides`` that changed the data settings (``stored_datamodule`` is the
    checkpoint's own ``dataset.datamodule``, ``run_cfg`` the config after the overrides).
    """
    diff = diff_state_dicts(model_state, ckpt_state)
    if diff.fits:
        return
    missing, unexpected, reshaped = diff.missing, diff.unexpected, diff.reshaped
    head = str((run_cfg.get("head") or {}).get("_target_", "none")).rsplit(".", 1)[-1]
    model = (
        f"backbone={run_cfg.backbone.get('name')}, head={head}, {num_channels} input channels, {num_classes} classes"
    )
    lines = [f"{ckpt_path}: the checkpoint's weights do not fit the model built from its config ({model}):"]
    shapes = [f"{k}: checkpoint {_shape(ckpt_state[k])}, model {_shape(model_state[k])}" for k in reshaped]
    for label, items in (
        ("shape differs", shapes),
        ("missing from the checkpoint", missing),
        ("not in the model", unexpected),
    ):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > _MAX_KEYS else ""
            lines.append(f"  {label}: {'; '.join(items[:_MAX_KEYS])}{more}")
    lines += _what_would_fit(
        model_state, ckpt_state, reshaped, run_cfg, stored_datamodule, num_channels=num_channels,
        num_classes=num_classes,
    )  # fmt: skip
    if missing or unexpected:
        lines.append(
            "Layer names differ: the weights come from another architecture than the one the config describes; "
            "the config stored in the checkpoint (splml_config) was changed or its state_dict replaced, so evaluate "
            "it with the config it was trained with."
        )
    raise CheckpointMismatchError("\n".join(lines))


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _what_would_fit(
    model_state: Mapping[str, torch.Tensor],
    ckpt_state: Mapping[str, torch.Tensor],
    reshaped: list[str],
    run_cfg: DictConfig,
    stored_datamodule: DictConfig,
    *,
    num_channels: int,
    num_classes: int,
) -> list[str]:
    """Lines saying which data settings the weights were trained for, read from their first and last layers."""
    lines = []
    datamodule = run_cfg.dataset.datamodule
    # The first convolution of the backbone reads the input; the head's weight has one row per class.
    first_conv = next((k for k, v in ckpt_state.items() if k.startswith("model.backbone.") and v.ndim == 4), None)
    if (
        first_conv in reshaped
        and model_state[first_conv].ndim == 4
        and model_state[first_conv].shape[1] == num_channels
    ):
        wanted = int(ckpt_state[first_conv].shape[1])
        line = f"The weights take {wanted} input channels"
        if "bands" in datamodule:
            sets = [name for name, bands in BAND_SETS.items() if len(bands) == wanted]
            fits = f"; band sets of {wanted} bands: {sets}" if sets else f"; give a list of {wanted} band names"
            line += f": dataset.datamodule.bands={_plain(datamodule.bands)} gives {num_channels}{fits}"
        lines.append(line + ".")
    head_weight = next((k for k, v in ckpt_state.items() if k.startswith("model.head.") and v.ndim >= 2), None)
    if (
        head_weight in reshaped
        and model_state[head_weight].ndim >= 2
        and model_state[head_weight].shape[0] == num_classes
    ):
        lines.append(
            f"The weights predict {int(ckpt_state[head_weight].shape[0])} classes; the data gives {num_classes}."
        )
    changed = {
        k: v for k, v in OmegaConf.to_container(datamodule, resolve=True).items()  # type: ignore[union-attr]
        if k not in stored_datamodule or _plain(stored_datamodule[k]) != v
    }  # fmt: skip
    if changed:
        listed = ", ".join(f"{k}={v}" for k, v in changed.items())
        lines.append(
            f"dataset_overrides changed {listed} (the checkpoint's config has "
            + ", ".join(f"{k}={_plain(stored_datamodule.get(k))}" for k in changed)
            + "): drop the overrides that change the band set or the classes."
        )
    return lines


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
