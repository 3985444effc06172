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
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from splml.methods.base import LossContext, SPMLLoss
from splml.metrics import MultiLabelMetricAccumulator

# Evaluation metrics are gathered over all ranks by the accumulator itself, so Lightning's advice
# to reduce them again with sync_dist does not apply.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


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
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        head_lr_mult: float = 1.0,
        optimizer: str = "adam",
        scheduler: str | None = "cosine",
        warmup_epochs: int = 0,
        linear_probe_epochs: int = 0,
        linear_probe_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.lr, self.weight_decay, self.head_lr_mult = lr, weight_decay, head_lr_mult
        self.optimizer_name, self.scheduler_name, self.warmup_epochs = optimizer, scheduler, warmup_epochs
        # "Linear init" of the SPML papers: the backbone is frozen (weights and BN statistics)
        # for the first linear_probe_epochs while the head trains at linear_probe_lr.
        self.linear_probe_epochs = int(linear_probe_epochs)
        self.linear_probe_lr = float(linear_probe_lr) if linear_probe_lr is not None else lr
        #: Filled by on_test_epoch_end so scripts can write results without parsing loggers.
        self.last_test_metrics: dict[str, float] = {}
        self.last_val_metrics: dict[str, float] = {}
        #: The resolved run config; saved in every checkpoint so ``splml.eval`` can rebuild the run.
        self.run_config: dict[str, Any] | None = None
        #: The job's identity overrides (splml.runs), saved in every checkpoint so that a re-run
        #: sweep recognises the interrupted run of a job.
        self.run_overrides: list[str] | None = None
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
        outputs = self.model(batch["image"])
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
            checkpoint["splml_config"] = self.run_config
        if self.run_overrides is not None:
            checkpoint["splml_overrides"] = self.run_overrides

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        head_params = list(self.model.head.parameters())
        head_ids = {id(p) for p in head_params}
        backbone_params = [p for p in self.model.parameters() if id(p) not in head_ids]
        # Named groups: the learning-rate monitor logs lr-<Optimizer>/backbone and .../head.
        groups = [
            {"name": "backbone", "params": backbone_params, "lr": self.lr},
            {"name": "head", "params": head_params, "lr": self.lr * self.head_lr_mult},
        ]
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {self.optimizer_name!r}; use adam, adamw or sgd")
        if self.scheduler_name in (None, "none"):
            if self.linear_probe_epochs:
                raise ValueError("optim.linear_probe_epochs needs a scheduler (optim.scheduler=cosine)")
            return opt
        if self.scheduler_name != "cosine":
            raise ValueError(f"unknown scheduler {self.scheduler_name!r}; use cosine or none")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        probe = min(total - 1, self.linear_probe_epochs * steps_per_epoch)
        warmup = min(total - probe - 1, self.warmup_epochs * steps_per_epoch)

        def fine_tune(step: int) -> float:
            # Linear warm-up then cosine decay over the steps after the linear probe.
            step -= probe
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - probe - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        def backbone_factor(step: int) -> float:
            return 0.0 if step < probe else fine_tune(step)

        def head_factor(step: int) -> float:
            return self.linear_probe_lr / self.lr if step < probe else fine_tune(step)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, [backbone_factor, head_factor])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
        probs = self.model(batch["image"])["logits"].sigmoid()
        metrics.update(probs.float(), batch["target"], batch["index"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

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
