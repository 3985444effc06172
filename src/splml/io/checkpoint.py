"""What a splml checkpoint holds besides Lightning's entries, read and written in one place.

* ``splml_config``: the run's resolved config (:func:`stored_run_config` reads it, with the class
  paths of older checkpoints updated to where the classes live now);
* ``splml_data_spec``: the :class:`DataSpec`, everything a user of the trained network must know
  about its input and output (classes in order, bands in order, normalisation, value range, image
  size, resizing, task, backbone and head), so that the model is rebuilt and fed correctly with no
  dataset on disk;
* ``splml_overrides``: the job's identity overrides (:mod:`splml.runs`);
* ``splml_logger_runs``: the experiment loggers' run ids (W&B), so that a run resumed into another
  folder continues the same dashboard run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

from splml.io.errors import DataFormatError

CONFIG_KEY: Final[str] = "splml_config"
DATA_SPEC_KEY: Final[str] = "splml_data_spec"
OVERRIDES_KEY: Final[str] = "splml_overrides"
LOGGER_RUNS_KEY: Final[str] = "splml_logger_runs"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's entries without reading its tensors into memory (they are memory-mapped)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (read in 1 MiB blocks): names exactly which checkpoint an export came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the stored config --------------------------------------------------------------------------------
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


def _update_old_adagc(node: dict[str, Any]) -> dict[str, Any]:
    """AdaGC options of checkpoints written before its AIO2 trigger and teachers, as the variant closest to them.

    Those runs switched with the knee rule on the macro AP (``trigger: adaptive``) and trained soft
    temporal-EMA pseudo-labels; ``dual_ema`` and ``teacher_every`` no longer exist. The loss only
    has to build for evaluation, which never trains.
    """
    node = {k: v for k, v in node.items() if k not in ("dual_ema", "teacher_every")}
    if node.get("trigger") == "adaptive":
        node.update(trigger="knee", curve="map")
    node.update(pseudo_labels="temporal_ema", correction_threshold=None)
    return node


def _update_moved_targets(node: Any) -> Any:
    """``node`` (a plain config) with every ``_target_`` of :data:`MOVED_TARGETS` renamed."""
    if isinstance(node, dict):
        if node.get("_target_") in _OLD_COMBINATIONS:
            node = _compose_old_combination(node)
        if str(node.get("_target_", "")).endswith("AdaGCLoss") and ("dual_ema" in node or "teacher_every" in node):
            node = _update_old_adagc(node)
        return {
            k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else _update_moved_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_update_moved_targets(v) for v in node]
    return node


def stored_run_config(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The training config stored in a splml checkpoint (a plain dict), moved class paths updated.

    A checkpoint without it was not written by ``splml.train``: an error naming ``path``.
    """
    if CONFIG_KEY not in checkpoint:
        raise DataFormatError(f"{path} was not written by splml.train (no {CONFIG_KEY!r} entry)")
    return _update_moved_targets(checkpoint[CONFIG_KEY])


# -- the data spec -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """What a trained network takes and gives: compare two with :meth:`diff`.

    An input image is ``len(bands)`` channels in the order of ``bands``, brought to ``image_size``
    x ``image_size`` by ``resize``, each raw value (within ``value_range`` of its modality)
    turned into ``(value * value_scale - mean[c]) / std[c]``. ``input_format`` says how files are
    decoded: ``reben`` (multispectral reBEN bands in their units: S2 reflectance x 10000, S1 dB)
    or ``rgb`` (8-bit RGB images, ``value_scale`` 1/255). The output has one score per class of
    ``class_names``, in that order (``task=classification``), or an embedding (``retrieval``).
    """

    task: str
    class_names: tuple[str, ...]
    bands: tuple[str, ...]
    image_size: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    value_scale: float
    value_range: Mapping[str, tuple[float, float] | None]
    input_format: str
    backbone: str
    head: str
    #: Bumped when a field's meaning changes, so readers can tell records apart.
    version: int = 1

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ValueError(
                f"data spec: {len(self.bands)} bands but {len(self.mean)} means and {len(self.std)} standard deviations"
            )
        if not self.class_names:
            raise ValueError("data spec: no class names")

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, dicts), as stored in checkpoints and export sidecars."""
        record = asdict(self)
        for key in ("class_names", "bands", "mean", "std"):
            record[key] = list(record[key])
        record["value_range"] = {k: (list(v) if v is not None else None) for k, v in self.value_range.items()}
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, where: str = "data spec") -> DataSpec:
        """The spec of a stored record; a missing or unknown entry is an error naming it and ``where``."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name != "version"}
        missing = sorted(required - set(record))
        unknown = sorted(set(record) - names)
        if missing or unknown:
            raise DataFormatError(
                f"{where}: data spec record with missing entries {missing} / unknown entries {unknown}"
            )
        return cls(
            task=str(record["task"]),
            class_names=tuple(str(c) for c in record["class_names"]),
            bands=tuple(str(b) for b in record["bands"]),
            image_size=int(record["image_size"]),
            resize=str(record["resize"]),
            mean=tuple(float(m) for m in record["mean"]),
            std=tuple(float(s) for s in record["std"]),
            value_scale=float(record["value_scale"]),
            value_range={
                str(k): (float(v[0]), float(v[1])) if v is not None else None for k, v in record["value_range"].items()
            },
            input_format=str(record["input_format"]),
            backbone=str(record["backbone"]),
            head=str(record["head"]),
            version=int(record.get("version", 1)),
        )

    def diff(self, other: DataSpec, *, names: tuple[str, str] = ("this", "other")) -> list[str]:
        """One line per field that differs (``bands: this ('B04', 'B03', 'B02'), other ('B02', ...)``); [] when equal.

        Numbers are compared to 1e-6 relative, so a record that went through JSON compares equal.
        """
        lines = []
        mine, theirs = self.to_dict(), other.to_dict()
        for key in mine:
            if key == "version" or _same(mine[key], theirs[key]):
                continue
            lines.append(f"{key}: {names[0]} {_brief(mine[key])}, {names[1]} {_brief(theirs[key])}")
        return lines


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _brief(value: Any, limit: int = 8) -> str:
    if isinstance(value, list) and len(value) > limit:
        return f"{value[:limit]} ... ({len(value)} in all)"
    return str(value)


def write_data_spec(checkpoint: dict[str, Any], spec: DataSpec) -> None:
    """Record ``spec`` in a checkpoint being saved."""
    checkpoint[DATA_SPEC_KEY] = spec.to_dict()


def read_data_spec(checkpoint: Mapping[str, Any], *, where: str = "checkpoint") -> DataSpec | None:
    """The checkpoint's data spec; None for checkpoints written before it was recorded."""
    record = checkpoint.get(DATA_SPEC_KEY)
    return None if record is None else DataSpec.from_dict(record, where=where)


# -- logger runs ---------------------------------------------------------------------------------------
def write_logger_runs(checkpoint: dict[str, Any], runs: Mapping[str, str]) -> None:
    """Record the experiment loggers' run ids (``{"wandb": "<id>"}``) in a checkpoint being saved."""
    if runs:
        checkpoint[LOGGER_RUNS_KEY] = dict(runs)


def read_logger_run(checkpoint: Mapping[str, Any], logger: str) -> str | None:
    """The run id the checkpoint recorded for ``logger`` (``wandb``), or None."""
    return (checkpoint.get(LOGGER_RUNS_KEY) or {}).get(logger)
