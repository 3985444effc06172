"""Train one model: ``python -m splml.train dataset=synthetic labels=random loss=an``.

Writes into the run directory: the resolved config (``.hydra/``), checkpoints (``best.ckpt``
chosen on the task's validation metric, ``callbacks.model_checkpoint.monitor``; ``last.ckpt``
for resuming), metrics per epoch (``csv/``), the observed training labels, and ``results.json``
with the test metrics of the best checkpoint and the run's provenance. The task (``task=``)
decides the model and the evaluation; this script only runs it. Lightning, torch and the
models are imported once Hydra has parsed the command line, so ``--help`` answers at once.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from splml.config import CHOICE_GROUPS, answer_help, config_dir, is_source_checkout, project_root, register_resolvers
from splml.config_checks import check_run_config
from splml.io.run_folder import RESULTS_FILE, load_checkpoint, write_results
from splml.runs import JobPlan, identity_overrides, plan_job

log = logging.getLogger(__name__)
register_resolvers()


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN; an undefined metric (no image with 4+ labels, say) is written as null.
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def run_choices(cfg: DictConfig) -> dict[str, Any]:
    """Which option of each config group this run used (from Hydra when available)."""
    choices: dict[str, Any] = {}
    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime.choices
        choices = {g: runtime.get(g) for g in CHOICE_GROUPS if g in runtime}
    return choices


def job_overrides() -> list[str] | None:
    """This job's identity overrides (see :mod:`splml.runs`); None outside a Hydra command."""
    if not HydraConfig.initialized():
        return None
    return identity_overrides(HydraConfig.get().overrides.task)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write ``results.json``; returns its content.

    Under ``trainer.fast_dev_run`` (``debug=fdr``) Lightning runs a few batches without saving
    checkpoints: the test then uses the weights as they are, and ``results.json`` says so.
    """
    check_run_config(cfg)  # before anything heavy is imported: a bad value fails at once, naming its key
    import lightning as L

    from splml.builders import build_callbacks, build_data_spec, build_datamodule, build_loggers, build_module
    from splml.provenance import run_provenance

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    started = time.time()

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    module.run_overrides = job_overrides()
    module.data_spec = build_data_spec(cfg, datamodule)
    callbacks = build_callbacks(cfg) + module.loss.callbacks(
        num_samples=len(datamodule.datasets["train"]), num_classes=datamodule.num_classes
    )
    loggers = build_loggers(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        labels_file = datamodule.save_observed_labels(output_dir)
        log.info("observed training labels saved to %s", labels_file)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    if best is None:
        raise ValueError("no ModelCheckpoint with a monitor in callbacks: the best checkpoint cannot be chosen")
    fast_dev_run = bool(trainer.fast_dev_run)
    best_path, best_score = best.best_model_path, best.best_model_score
    if fast_dev_run:  # Lightning saves no checkpoint in a fast_dev_run: test the weights as they are
        trainer.test(module, datamodule=datamodule)
        best_path, best_score, best_ckpt = "", None, None
    else:
        if not best_path:
            raise RuntimeError("no best checkpoint was written: is validation running (limit_val_batches > 0)?")
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path)
        best_ckpt = _read_best_epoch(best_path)

    results: dict[str, Any] = {
        **_finite(module.last_test_metrics),
        # e.g. val/mAP_macro_best (classification), val/mAP@100_best (retrieval)
        f"{best.monitor}_best": float(best_score) if best_score is not None else None,
        "best_metric": best.monitor,
        "summary_metrics": list(module.summary_metrics),
        "best_epoch": best_ckpt,
        "best_checkpoint": str(best_path) if best_path else None,
        "seed": int(cfg.seed),
        "choices": run_choices(cfg),
        "overrides": job_overrides(),
        "resumed_from": cfg.get("ckpt_path"),
        "config": {
            k: OmegaConf.to_container(cfg[k], resolve=True) if cfg.get(k) is not None else None
            for k in ("task", "dataset", "labels", "loss", "backbone", "head", "optim")
        },
        "class_names": list(datamodule.class_names),
        "class_order": "original",
        "epochs_run": int(trainer.current_epoch),
        "wall_time_s": round(time.time() - started, 1),
        "status": "completed",
        "provenance": run_provenance(
            code_dir=project_root() if is_source_checkout() else None,
            device=trainer.strategy.root_device,
            precision=str(trainer.precision),
            trainer=OmegaConf.to_container(cfg.trainer, resolve=True),
            world_size=trainer.world_size,
        ),
    }
    if fast_dev_run:
        results["fast_dev_run"] = True
    if trainer.is_global_zero:
        write_results(output_dir / RESULTS_FILE, results)
        summary = " | ".join(f"{k} {results[k]:.2f}" for k in module.summary_metrics if results.get(k) is not None)
        log.info("%s (best epoch %s) -> %s", summary, results["best_epoch"], output_dir / "results.json")
    return results


def best_score(results: dict[str, Any]) -> float | None:
    """The validation score the best checkpoint was chosen on (what Hydra sweepers maximise)."""
    return results.get(f"{results.get('best_metric', 'val/mAP_macro')}_best")


def _read_best_epoch(path: str) -> int | None:
    ckpt = load_checkpoint(Path(path))  # memory-mapped: the weights are not read
    return int(ckpt["epoch"]) if "epoch" in ckpt else None


def _record_failure(cfg: DictConfig, exc: BaseException) -> None:
    """In a sweep, a failed job writes a results.json saying so, and the sweep goes on."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    failure = {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "seed": int(cfg.seed),
        "choices": run_choices(cfg),
        "overrides": job_overrides(),
    }
    write_results(output_dir / RESULTS_FILE, failure)
    log.error("run failed (%s); recorded in %s and the sweep continues", failure["error"], output_dir / "results.json")


def continue_job(cfg: DictConfig) -> JobPlan:
    """``skip_completed``: find a completed run of this job, or an interrupted one to resume (sets ``ckpt_path``)."""
    overrides = job_overrides() or []
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    sweep_dir = Path(HydraConfig.get().sweep.dir) if multirun else None
    plan = plan_job(Path(cfg.paths.output_dir), overrides, int(cfg.seed), run_choices(cfg), sweep_dir=sweep_dir)
    if plan.completed_dir is not None:
        log.info("skip_completed: %s holds a completed run of this job", plan.completed_dir)
    elif plan.resume_from is not None and not cfg.get("ckpt_path"):
        log.info("skip_completed: resuming the interrupted run of this job from %s", plan.resume_from)
        with open_dict(cfg):
            cfg.ckpt_path = str(plan.resume_from)
    return plan


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("skip_completed"):
        plan = continue_job(cfg)
        if plan.result is not None:
            return best_score(plan.result)
    try:
        results = train(cfg)
    except Exception as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            _record_failure(cfg, exc)
            return None
        raise
    # Returned for Hydra sweepers (Optuna maximises the validation score).
    return best_score(results)


def cli() -> None:
    """``splml-train``: the command line (a quick ``--help``, then Hydra)."""
    if not answer_help("train", "splml-train", "train one model (or a sweep with -m); writes a run folder"):
        main()


if __name__ == "__main__":
    cli()
