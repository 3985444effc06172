"""The LightningModules of the suite: training shared by every task, evaluation per task.

They know nothing about individual methods: the loss object (``loss=`` group) turns model
outputs and the batch into a scalar, and callbacks that own per-sample state attach what the
loss needs to ``batch["extras"]`` before the forward pass. :class:`SPMLTrainingModule` holds
everything that is not evaluation (training step, optimiser, schedule, linear probe);
:class:`SPMLModule` evaluates classification, identically for every method: probabilities on
every validation/test sample against the full labels. ``task=retrieval`` uses
:class:`splml.retrieval_module.RetrievalModule` instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from splml.io.checkpoint import CONFIG_KEY, OVERRIDES_KEY, DataSpec, write_data_spec
from splml.methods.base import LossContext, SPMLLoss
from splml.metrics import MultiLabelMetricAccumulator
from splml.optim import OptimizerFactory, RunLength, SchedulerFactory, build_scheduler, named_parameter_groups

# Evaluation metrics are gathered over all ranks by the accumulator itself, so Lightning's advice
# to reduce them again with sync_dist does not apply.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


def float32_outputs(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model outputs with every floating tensor in float32 (float32 tensors are returned as they are)."""
    return {k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in outputs.items()}


class SPMLTrainingModule(L.LightningModule):
    """Trains ``model`` (with ``backbone`` and ``head`` parts) with ``loss``; subclasses evaluate.

    Subclasses fill ``last_val_metrics`` / ``last_test_metrics`` (``val/...``, ``test/...``
    keys) and name in ``summary_metrics`` the test metrics a run's log line reports.
    """

    #: Test metrics that the training script prints at the end of a run.
    summary_metrics: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        loss: SPMLLoss,
        optimizer: OptimizerFactory = torch.optim.Adam,
        scheduler: SchedulerFactory | None = None,
        lr: float = 1e-3,
        head_lr_mult: float = 1.0,
        linear_probe_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        # Built by configure_optimizers from the optim.optimizer / optim.scheduler nodes (splml.optim).
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr, self.head_lr_mult = lr, head_lr_mult
        # "Linear init" of the SPML papers: the backbone is frozen (weights and BN statistics)
        # for the first linear_probe_epochs; the scheduler gives the head its probe rate.
        self.linear_probe_epochs = int(linear_probe_epochs)
        #: Filled by on_test_epoch_end so scripts can write results without parsing loggers.
        self.last_test_metrics: dict[str, float] = {}
        self.last_val_metrics: dict[str, float] = {}
        #: The resolved run config; saved in every checkpoint so ``splml.eval`` can rebuild the run.
        self.run_config: dict[str, Any] | None = None
        #: The job's identity overrides (splml.runs), saved in every checkpoint so that a re-run
        #: sweep recognises the interrupted run of a job.
        self.run_overrides: list[str] | None = None
        #: What the network takes and gives (classes, bands, normalisation, image size); saved in
        #: every checkpoint so that the model can be rebuilt and used without the dataset.
        self.data_spec: DataSpec | None = None
        # Per-epoch counts (selected, correct, hidden positives) of a loss's pseudo-positives.
        self._pseudo_counts: Tensor | None = None

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return self.model(image)

    def loss_context(self) -> LossContext:
        max_epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1
        return LossContext(
            epoch=self.current_epoch, max_epochs=max_epochs, global_step=self.global_step, training=self.training
        )

    # -- training ---------------------------------------------------------------------------
    def in_linear_probe(self) -> bool:
        return self.current_epoch < self.linear_probe_epochs

    def on_train_epoch_start(self) -> None:
        frozen = self.in_linear_probe()
        self.model.backbone.requires_grad_(not frozen)
        if frozen:
            self.model.backbone.eval()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        batch.setdefault("extras", {})
        missing = [k for k in self.loss.requires_extras if k not in batch["extras"]]
        if missing:
            raise RuntimeError(
                f"loss {self.loss.name!r} needs {missing} in batch['extras'], which its callback provides; "
                "was the callback removed from the config?"
            )
        # Under mixed precision the network runs in autocast; the loss (and, through "outputs", the
        # stores) get its outputs in float32 and compute with autocast off: the logs and sigmoids of
        # half-precision logits would lose the digits they need. At 32-true this changes nothing.
        outputs = float32_outputs(self.model(batch["image"]))
        with torch.autocast(self.device.type, enabled=False):
            result = self.loss(outputs, batch, self.loss_context())
        if isinstance(result, Tensor):
            result = {"loss": result}
        loss = result["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss {self.loss.name!r} is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}"
            )
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        pseudo = result.pop("pseudo_positive_mask", None)
        if pseudo is not None:
            self._count_pseudo_positives(pseudo, batch)
        for key, value in result.items():
            if key != "loss" and isinstance(value, Tensor) and value.numel() == 1:
                self.log(f"train/{key}", value.float(), on_step=False, on_epoch=True, batch_size=batch_size)
        # Callbacks that own stores read the detached outputs from here (on_train_batch_end).
        result["outputs"] = {k: v.detach() for k, v in outputs.items()}
        return result

    def _count_pseudo_positives(self, pseudo: Tensor, batch: dict[str, Any]) -> None:
        unknown = batch["observed"].abs() < 0.5
        hidden = (batch["target"] > 0.5) & unknown
        pseudo = pseudo.bool() & unknown
        counts = torch.stack([pseudo.sum(), (pseudo & hidden).sum(), hidden.sum()]).float()
        self._pseudo_counts = counts if self._pseudo_counts is None else self._pseudo_counts + counts

    def on_train_epoch_end(self) -> None:
        if self._pseudo_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._pseudo_counts, reduce_op="sum")
        selected, hits, hidden = (float(c) for c in counts)
        self._pseudo_counts = None
        values = {
            "diag/extra_positive_precision": 100.0 * hits / selected if selected else float("nan"),
            "diag/extra_positive_recall": 100.0 * hits / hidden if hidden else float("nan"),
            "diag/extra_positives": selected,
            "diag/false_negatives_penalised": hidden - hits,
        }
        self.log_dict({k: v for k, v in values.items() if math.isfinite(v)}, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        if self.run_overrides is not None:
            checkpoint[OVERRIDES_KEY] = self.run_overrides
        if self.data_spec is not None:
            write_data_spec(checkpoint, self.data_spec)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, strict: bool | None = None, **kwargs: Any
    ) -> SPMLTrainingModule:
        """The module of a splml checkpoint, rebuilt from the config and data spec stored in it (no dataset
        needed), in eval mode: see :func:`splml.inference.load_model` (``kwargs`` are not used)."""
        from splml.inference import load_model

        module = load_model(checkpoint_path, map_location=map_location or "cpu", strict=strict is not False)
        if not isinstance(module, cls):
            raise TypeError(f"{checkpoint_path} holds a {type(module).__name__}, not a {cls.__name__}")
        return module

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        head_params = list(self.model.head.parameters())
        head_ids = {id(p) for p in head_params}
        backbone_params = [p for p in self.model.parameters() if id(p) not in head_ids]
        # Named groups: the learning-rate monitor logs lr-<Optimizer>/backbone and .../head.
        groups = named_parameter_groups(backbone_params, head_params, self.lr, self.head_lr_mult)
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            if self.linear_probe_epochs:
                raise ValueError(
                    "optim.linear_probe_epochs needs a scheduler that runs the probe (optim/scheduler=cosine), "
                    "but optim.scheduler is null"
                )
            return optimizer
        run_length = RunLength.of_trainer(self.trainer.estimated_stepping_batches, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": build_scheduler(self.scheduler_factory, optimizer, run_length)}


class SPMLModule(SPMLTrainingModule):
    """Classification: trains ``model`` with ``loss``; evaluates macro/micro mAP and the other metrics."""

    summary_metrics = ("test/mAP_macro", "test/mAP_micro", "test/F1_macro")

    def __init__(
        self,
        model: nn.Module,
        loss: SPMLLoss,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        threshold: float = 0.5,
        **optim: Any,
    ) -> None:
        super().__init__(model, loss, **optim)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        metric_kwargs = {"num_classes": num_classes, "class_names": self.class_names, "threshold": threshold}
        self.val_metrics = MultiLabelMetricAccumulator(**metric_kwargs)
        self.test_metrics = MultiLabelMetricAccumulator(**metric_kwargs)

    # -- evaluation -------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], metrics: MultiLabelMetricAccumulator) -> None:
        probs = self.model(batch["image"])["logits"].float().sigmoid()  # float32 scores: no half-precision ties
        # ImageNet + ReaL items also carry their single label and whether their label set is known.
        metrics.update(
            probs.float(), batch["target"], batch["index"], batch.get("original_label"), batch.get("has_target")
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"probs": B x L}`` (sigmoid of the logits, in the order of ``class_names``), with the batch's ``index``."""
        probs = self.model(batch["image"])["logits"].float().sigmoid()
        return {"probs": probs, "index": batch["index"]} if "index" in batch else {"probs": probs}

    def _log_metrics(self, prefix: str, metrics: MultiLabelMetricAccumulator) -> dict[str, float]:
        values = metrics.compute()
        metrics.reset()
        scalars = {f"{prefix}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        # NaN (e.g. a k-split without images) would poison checkpoint monitoring; log only finite values.
        self.log_dict({k: v for k, v in scalars.items() if math.isfinite(v)}, sync_dist=False)
        return scalars

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        self.last_val_metrics = self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_metrics("test", self.test_metrics)
