"""Evaluate a trained checkpoint: ``python -m splml.eval ckpt_path=<run>/checkpoints/best.ckpt``.

The run's resolved config travels inside the checkpoint, so nothing but the checkpoint is
needed; ``+dataset_overrides.<key>=...`` adapts the data paths to another machine. The run's task
decides the evaluation: classification metrics, or retrieval of the split's images from the
training split (``retrieval_grid.png`` is then written into this command's run folder).
Weights that
do not fit the model the (overridden) config builds are a :class:`CheckpointMismatchError`
naming the checkpoint, the first differing keys and shapes, and what would fit.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from splml.builders import build_datamodule, build_module, config_dir, register_resolvers
from splml.config_checks import check_run_config
from splml.io.reben.format import BAND_SETS
from splml.io.run_folder import load_checkpoint
from splml.io.weights import diff_state_dicts, state_dict_of

log = logging.getLogger(__name__)
register_resolvers()


#: Classes that moved, by the path that configs stored in older checkpoints name: they still build.
MOVED_TARGETS: dict[str, str] = {
    "splml.data.datamodule.ReBENDataModule": "splml.data.datamodules.reben.ReBENDataModule",
    "splml.data.datamodule.SyntheticReBENDataModule": "splml.data.datamodules.reben.SyntheticReBENDataModule",
    "splml.data.image_folders.AIDDataModule": "splml.data.datamodules.image_folders.AIDDataModule",
    "splml.data.image_folders.LabelTableDataModule": "splml.data.datamodules.image_folders.LabelTableDataModule",
    "splml.data.spml_files.SPMLFilesDataModule": "splml.data.datamodules.spml_files.SPMLFilesDataModule",
    "splml.data.spml_files.ObservedLabelsFile": "splml.data.labels.ObservedLabelsFile",
    # Losses (one module per method then; one home per method or family now).
    "splml.losses.adagc.AdaGCLoss": "splml.methods.adagc.loss.AdaGCLoss",
    "splml.losses.an.AssumeNegativeLoss": "splml.methods.an.AssumeNegativeLoss",
    "splml.losses.an_ls.LabelSmoothingANLoss": "splml.methods.an_ls.LabelSmoothingANLoss",
    "splml.losses.asl.AsymmetricLoss": "splml.methods.asl.AsymmetricLoss",
    "splml.losses.em.EntropyMaximizationLoss": "splml.methods.em.em.EntropyMaximizationLoss",
    "splml.losses.em_apl.EMAPLLoss": "splml.methods.em.em_apl.EMAPLLoss",
    "splml.losses.en.ExpectedNegativeLoss": "splml.methods.expected.en.ExpectedNegativeLoss",
    "splml.losses.ep.ExpectedPositiveLoss": "splml.methods.expected.ep.ExpectedPositiveLoss",
    "splml.losses.epr.ExpectedPositiveRegularizerLoss": "splml.methods.epr.ExpectedPositiveRegularizerLoss",
    "splml.losses.focal.FocalLoss": "splml.methods.focal.FocalLoss",
    "splml.losses.full.FullLabelLoss": "splml.methods.full.FullLabelLoss",
    "splml.losses.gr.GeneralizedRobustLoss": "splml.methods.gr.GeneralizedRobustLoss",
    "splml.losses.hill.HillLoss": "splml.methods.hill.HillLoss",
    "splml.losses.jaccard_supcon.JaccardSupConLoss": "splml.methods.contrastive.jaccard_supcon.JaccardSupConLoss",
    "splml.losses.ll_cp.LargeLossPermanentCorrection": "splml.methods.large_loss.ll_cp.LargeLossPermanentCorrection",
    "splml.losses.ll_ct.LargeLossTemporaryCorrection": "splml.methods.large_loss.ll_ct.LargeLossTemporaryCorrection",
    "splml.losses.ll_r.LargeLossRejection": "splml.methods.large_loss.ll_r.LargeLossRejection",
    "splml.losses.macl.MACLLoss": "splml.methods.contrastive.macl.MACLLoss",
    "splml.losses.mulsupcon.MulSupConLoss": "splml.methods.contrastive.mulsupcon.MulSupConLoss",
    "splml.losses.role.ROLELoss": "splml.methods.role.loss.ROLELoss",
    "splml.losses.splc.SPLCLoss": "splml.methods.splc.SPLCLoss",
    "splml.losses.supcon.SupConLoss": "splml.methods.contrastive.supcon.SupConLoss",
    "splml.losses.wan.WeakAssumeNegativeLoss": "splml.methods.wan.WeakAssumeNegativeLoss",
}

#: The hand-written combinations of older checkpoints, as (base, term) of today's composition
#: (``splml.methods.combined.CombinedLoss``, ``conf/loss/<base>_<term>.yaml``).
_OLD_COMBINATIONS: dict[str, tuple[str, str]] = {
    f"splml.losses.combined.{prefix}{kind}Loss": (base, term)
    for prefix, base in (
        ("EN", "splml.methods.expected.en.ExpectedNegativeLoss"),
        ("EP", "splml.methods.expected.ep.ExpectedPositiveLoss"),
        ("EPR", "splml.methods.epr.ExpectedPositiveRegularizerLoss"),
        ("AN", "splml.methods.an.AssumeNegativeLoss"),
    )
    for kind, term in (
        ("Consistency", "splml.methods.expected.cl.ConsistencyLoss"),
        ("SpatialConsistency", "splml.methods.scl.loss.SpatialConsistencyLoss"),
    )
}


def _compose_old_combination(node: dict[str, Any]) -> dict[str, Any]:
    """An older checkpoint's combination class (flat options) as today's base + term composition."""
    base_target, term_target = _OLD_COMBINATIONS[node["_target_"]]
    base: dict[str, Any] = {"_target_": base_target}
    if "expected_positives" in node:
        base["expected_positives"] = node["expected_positives"]
    if "score_momentum" in node and not base_target.endswith("AssumeNegativeLoss") and "Regularizer" not in base_target:
        base["score_momentum"] = node["score_momentum"]
    if term_target.endswith("SpatialConsistencyLoss"):
        term = {"_target_": term_target, **(node.get("scl") or {})}
    else:
        term = {"_target_": term_target, "score_momentum": node.get("score_momentum", 0.8)}
    return {
        "_target_": "splml.methods.combined.CombinedLoss", "base": base, "term": term,
        "gamma": node.get("gamma", 1.0), "start_epoch": node.get("consistency_start_epoch", 0),
    }  # fmt: skip


def _update_moved_targets(node: Any) -> Any:
    """``node`` (a plain config) with every ``_target_`` of :data:`MOVED_TARGETS` renamed."""
    if isinstance(node, dict):
        if node.get("_target_") in _OLD_COMBINATIONS:
            node = _compose_old_combination(node)
        return {
            k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else _update_moved_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_update_moved_targets(v) for v in node]
    return node


def load_run_config(ckpt_path: Path) -> tuple[DictConfig, dict[str, Any]]:
    """The training config stored in a splml checkpoint, and the checkpoint itself (memory-mapped)."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    if "splml_config" not in ckpt:
        raise ValueError(f"{ckpt_path} was not written by splml.train (no 'splml_config' entry)")
    return OmegaConf.create(_update_moved_targets(ckpt["splml_config"])), ckpt


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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    run_cfg, ckpt = load_run_config(ckpt_path)
    if cfg.split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {cfg.split!r}")
    stored_datamodule = run_cfg.dataset.datamodule.copy()
    run_cfg.dataset.datamodule = OmegaConf.merge(run_cfg.dataset.datamodule, cfg.get("dataset_overrides") or {})
    check_run_config(run_cfg, training=False)
    datamodule = build_datamodule(run_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = build_module(run_cfg, datamodule)
    weights = state_dict_of(ckpt, ckpt_path)  # the "state_dict" entry, read as any weights file
    check_weights_fit(
        module.state_dict(), weights, ckpt_path=ckpt_path, run_cfg=run_cfg,
        stored_datamodule=stored_datamodule, num_channels=datamodule.num_channels, num_classes=datamodule.num_classes,
    )  # fmt: skip
    module.load_state_dict(weights)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    if cfg.split == "test":
        trainer.test(module, datamodule=datamodule)
        metrics = module.last_test_metrics
    else:
        trainer.test(module, dataloaders=datamodule.val_dataloader())
        metrics = {k.replace("test/", "validation/", 1): v for k, v in module.last_test_metrics.items()}
    results = {
        **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
        "checkpoint": str(ckpt_path),
        "epoch": ckpt.get("epoch"),
        "split": cfg.split,
    }
    out = (
        Path(cfg.output_file) if cfg.get("output_file") else ckpt_path.parent.parent / f"eval_{cfg.split}_results.json"
    )
    out.write_text(json.dumps(results, indent=2))
    prefix = "test" if cfg.split == "test" else "validation"
    summary = [k.replace("test/", f"{prefix}/", 1) for k in module.summary_metrics]
    log.info("%s -> %s", " | ".join(f"{k} {metrics[k]:.2f}" for k in summary if k in metrics), out)
    return results


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
