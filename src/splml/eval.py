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
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from splml.config import answer_help, config_dir, register_resolvers
from splml.config_checks import check_run_config
from splml.io.checkpoint import MOVED_TARGETS, _update_moved_targets  # noqa: F401 - where older code found them
from splml.schema import validate_config

log = logging.getLogger(__name__)
register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    # Lightning, torch and the models load here, after Hydra has parsed the command line (a fast --help).
    from splml.builders import build_datamodule, build_module, without_initial_weights
    from splml.inference import check_weights_fit, load_run_config
    from splml.io.weights import state_dict_of

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
    module = build_module(without_initial_weights(run_cfg), datamodule)
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
    validate_config(cfg)  # this command's own settings (trainer); the run's are checked once read
    evaluate(cfg)


def cli() -> None:
    """``splml-eval``: the command line (a quick ``--help``, then Hydra)."""
    if not answer_help("eval", "splml-eval", "evaluate a checkpoint on its run's test (or validation) split"):
        main()


if __name__ == "__main__":
    cli()
