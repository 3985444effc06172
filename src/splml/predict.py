"""Score images with a trained model: ``splml-predict ckpt=<run>/checkpoints/best.ckpt input=<images>``.

The model, its classes and its preprocessing come from the checkpoint alone
(:func:`splml.load_model`); ``input`` is a folder of images, a reBEN LMDB, a list file or one
image (:mod:`splml.data.datasets.files` reads them as training read its data). The table
(``out``, CSV or parquet; :mod:`splml.io.predictions`) has one row per input: the probability of
every class, the ``top_k`` most probable classes and the ``labels`` at or above their threshold
(one threshold, the run's ``optim.threshold`` by default, or per class from a JSON file or chosen
on the run's validation split). A retrieval model writes its embeddings instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from splml.config import answer_help, config_dir, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

INPUT_TYPES = ("auto", "folder", "lmdb", "list", "file")


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda when available, else cpu; anything else as torch names it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_input(cfg: DictConfig, spec: Any) -> tuple[Any, list[str], list[str] | None]:
    """The dataset of ``cfg.input``, the ids of its items and (for files) their paths."""
    from splml.data.datasets import files

    source = Path(str(cfg.input)).expanduser()
    kind = files.input_kind(source) if cfg.input_type == "auto" else str(cfg.input_type)
    if kind not in INPUT_TYPES[1:]:
        raise ValueError(f"input_type={cfg.input_type!r}: choose one of {INPUT_TYPES}")
    if kind == "lmdb":
        dataset = files.ReBENPatchesDataset(
            source, spec, metadata=cfg.get("metadata"), split=cfg.get("split"), on_error=cfg.on_error
        )
        return dataset, list(dataset.ids), None
    if cfg.get("metadata") or cfg.get("split"):
        raise ValueError(f"metadata= and split= select reBEN patches; input={source} is a {kind}, not a reBEN LMDB")
    if kind == "folder":
        paths, ids = files.image_files(source)
    elif kind == "list":
        paths, ids = files.listed_files(source)
    else:
        paths, ids = [source], [source.name]
    dataset = files.ImageFilesDataset(paths, ids, spec, on_error=cfg.on_error)
    return dataset, ids, [str(p) for p in paths]


def run_model(module: Any, loader: Any, device: Any, *, progress: bool) -> tuple[Any, Any, list[tuple[int, str]]]:
    """``predict_step`` over ``loader``: (item indices, outputs N x L or N x D as numpy, failed (index, message))."""
    import numpy as np
    import torch
    from tqdm import tqdm

    indices, outputs, failed = [], [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
            failed += batch.pop("failed", [])
            if batch["image"].numel() == 0:
                continue
            result = module.predict_step({"image": batch["image"].to(device), "index": batch["index"]})
            outputs.append((result["probs"] if "probs" in result else result["embedding"]).float().cpu().numpy())
            indices.append(batch["index"].numpy())
    if not outputs:
        return np.zeros(0, dtype=np.int64), None, failed
    return np.concatenate(indices), np.concatenate(outputs), failed


def validation_thresholds(cfg: DictConfig, module: Any, device: Any, out: Path) -> Any:
    """F1-optimal thresholds per class on the run's validation split, written next to ``out``."""
    import numpy as np
    import torch

    from splml.builders import build_datamodule
    from splml.config_checks import check_run_config
    from splml.io.predictions import write_thresholds
    from splml.thresholds import f1_optimal_thresholds

    run_cfg = OmegaConf.create(module.run_config)
    run_cfg.dataset.datamodule = OmegaConf.merge(run_cfg.dataset.datamodule, cfg.get("dataset_overrides") or {})
    check_run_config(run_cfg, training=False)
    datamodule = build_datamodule(run_cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    probs, targets = [], []
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            probs.append(module.predict_step({"image": batch["image"].to(device)})["probs"].cpu().numpy())
            targets.append(batch["target"].numpy())
    default = float(run_cfg.optim.get("threshold", 0.5))
    thresholds, f1 = f1_optimal_thresholds(np.concatenate(probs), np.concatenate(targets), default)
    names = module.data_spec.class_names
    path = write_thresholds(
        out.with_name(f"{out.stem}_thresholds.json"), names, thresholds, checkpoint=str(cfg.ckpt),
        chosen_on="validation split, F1-optimal per class", validation_f1={n: (None if np.isnan(v) else float(v))
                                                                          for n, v in zip(names, f1, strict=True)},
        classes_without_positives=[n for n, v in zip(names, f1, strict=True) if np.isnan(v)], default=default,
    )  # fmt: skip
    log.info("per-class thresholds chosen on the validation split -> %s", path)
    return thresholds


def class_thresholds(cfg: DictConfig, module: Any, device: Any, out: Path) -> Any:
    """The threshold of each class: ``thresholds`` (a JSON file or ``validation``), else ``threshold``."""
    import numpy as np

    from splml.io.predictions import read_thresholds

    names = module.data_spec.class_names
    chosen = cfg.get("thresholds")
    if chosen is not None and cfg.get("threshold") is not None:
        raise ValueError("give threshold= (one for every class) or thresholds= (per class), not both")
    if chosen == "validation":
        return validation_thresholds(cfg, module, device, out)
    if chosen is not None:
        return read_thresholds(Path(str(chosen)), names)
    value = cfg.get("threshold")
    if value is None:
        value = (module.run_config or {}).get("optim", {}).get("threshold", 0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"threshold={value!r}: a probability in [0, 1]")
    return np.full(len(names), float(value))


def predict(cfg: DictConfig) -> Path:
    """Write the predictions table of ``cfg.input``; returns its path."""
    import torch

    from splml.data.datasets.files import ON_ERROR, collate_inputs
    from splml.inference import load_model
    from splml.io.predictions import check_table_path, write_predictions, write_skipped

    out = check_table_path(Path(str(cfg.out)).expanduser())
    if cfg.on_error not in ON_ERROR:
        raise ValueError(f"on_error={cfg.on_error!r}: choose one of {ON_ERROR}")
    for key in ("batch_size", "top_k", "num_workers"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
            raise ValueError(f"{key}={value!r}: an integer >= {1 if key == 'batch_size' else 0}")
    device = resolve_device(str(cfg.device))
    module = load_model(str(cfg.ckpt), map_location=device)
    spec = module.data_spec
    if cfg.top_k > spec.num_classes:
        raise ValueError(f"top_k={cfg.top_k}: the model has {spec.num_classes} classes")
    classification = spec.task == "classification"
    thresholds = class_thresholds(cfg, module, device, out) if classification else None
    dataset, ids, paths = open_input(cfg, spec)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, collate_fn=collate_inputs
    )
    indices, outputs, failed = run_model(module, loader, device, progress=bool(cfg.progress))
    if failed:
        skipped = write_skipped(out, [(ids[i], message) for i, message in sorted(failed)])
        log.warning("%d of %d inputs could not be used; listed in %s", len(failed), len(ids), skipped)
    kept = [int(i) for i in indices]
    results: dict[str, Any] = {"probs": outputs, "thresholds": thresholds, "top_k": cfg.top_k} if classification else {
        "embeddings": outputs
    }  # fmt: skip
    if outputs is None:
        results = {}
    write_predictions(
        out, [ids[i] for i in kept], class_names=spec.class_names, paths=[paths[i] for i in kept] if paths else None,
        **results,
    )  # fmt: skip
    log.info("%d predictions (%s, %s) -> %s", len(kept), spec.backbone, spec.task, out)
    return out


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


def cli() -> None:
    """``splml-predict``: the command line (a quick ``--help``, then Hydra)."""
    if not answer_help("predict", "splml-predict", "score images, a reBEN LMDB or a list of files with a checkpoint"):
        main()


if __name__ == "__main__":
    cli()
