"""Evaluate a trained checkpoint: ``python -m splml.eval ckpt_path=<run>/checkpoints/best.ckpt``.

The run's resolved config travels inside the checkpoint, so nothing but the checkpoint is
needed; ``dataset_overrides.<key>=...`` adapts the data paths to another machine. The run's task
decides the evaluation: classification metrics, or retrieval of the split's images from the
training split (``retrieval_grid.png`` is then written into this command's run folder).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from splml.builders import build_datamodule, build_module, config_dir, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def load_run_config(ckpt_path: Path) -> tuple[DictConfig, dict[str, Any]]:
    """The training config stored in a splml checkpoint, and the checkpoint itself."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "splml_config" not in ckpt:
        raise ValueError(f"{ckpt_path} was not written by splml.train (no 'splml_config' entry)")
    return OmegaConf.create(ckpt["splml_config"]), ckpt


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    run_cfg, ckpt = load_run_config(ckpt_path)
    if cfg.split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {cfg.split!r}")
    run_cfg.dataset.datamodule = OmegaConf.merge(run_cfg.dataset.datamodule, cfg.get("dataset_overrides") or {})
    datamodule = build_datamodule(run_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = build_module(run_cfg, datamodule)
    module.load_state_dict(ckpt["state_dict"])
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
