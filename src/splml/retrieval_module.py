"""The LightningModule of ``task=retrieval``: contrastive training, retrieval evaluation.

Training is that of every task (:class:`splml.module.SPMLTrainingModule`): the retrieval model
(:class:`splml.models.projection.RetrievalModel`) maps images to embeddings and a contrastive
loss (``loss=supcon|jaccard_supcon|mulsupcon|macl``) reads the projection ``z``.

Evaluation ranks a database by cosine similarity to each query
(:mod:`splml.retrieval_metrics`): the database is the training split rendered without
augmentation, embedded afresh at the end of every validation and test epoch; the queries are
the validation split (model selection: validation queries against the training database, so
the test split is never looked at before the end) and the test split (the reported numbers).
Relevance uses the full labels of both sides, whatever labels the training saw. Every query and
database item counts once (DDP padding removed). The test epoch also draws
``retrieval_grid.png``: a few queries with their top-k images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from splml.methods.base import SPMLLoss
from splml.module import SPMLTrainingModule
from splml.retrieval_metrics import DEFAULT_KS, EmbeddingCollector, compute_retrieval_metrics, cutoff_name, top_k

#: ``database(rank, world_size)`` -> loader of the database split (items in the batch contract).
DatabaseLoader = Callable[[int, int], DataLoader]


class RetrievalModule(SPMLTrainingModule):
    """Trains a retrieval model with a contrastive loss; evaluates mAP@K, nDCG@K, ACG@K, WAP@K, precision@K."""

    def __init__(
        self,
        model: nn.Module,
        loss: SPMLLoss,
        database: DatabaseLoader | None,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ks: Sequence[int | str] = DEFAULT_KS,
        summary_k: int | str = 100,
        grid_queries: int = 6,
        grid_top_k: int = 8,
        **optim: Any,
    ) -> None:
        super().__init__(model, loss, **optim)
        self.database = database
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.ks = [k if k == "all" else int(k) for k in ks]
        if summary_k not in self.ks:
            raise ValueError(
                f"task.module.summary_k={summary_k!r} must be one of the cut-offs task.module.ks={self.ks}"
            )
        k = cutoff_name(summary_k)
        self.summary_metrics = (f"test/mAP@{k}", "test/mAP@all", f"test/nDCG@{k}", f"test/WAP@{k}")
        self.grid_queries, self.grid_top_k = int(grid_queries), int(grid_top_k)
        self.val_queries = EmbeddingCollector()
        self.test_queries = EmbeddingCollector()
        self.database_items = EmbeddingCollector()

    # -- evaluation -------------------------------------------------------------------------
    def _embed(self, batch: dict[str, Any], collector: EmbeddingCollector) -> None:
        embedding = self.model(batch["image"])["embedding"]
        collector.update(embedding.float(), batch["target"], batch["index"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._embed(batch, self.val_queries)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._embed(batch, self.test_queries)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"embedding": B x D}`` (L2-normalised, what retrieval ranks by), with the batch's ``index``."""
        embedding = self.model(batch["image"])["embedding"].float()
        return {"embedding": embedding, "index": batch["index"]} if "index" in batch else {"embedding": embedding}

    @torch.no_grad()
    def embed_database(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, DataLoader]:
        """Embeddings, full labels and dataset indices of the whole database (on every rank), and its loader."""
        if self.database is None:
            raise RuntimeError(
                "this retrieval module has no database (it was loaded from a checkpoint without its data): evaluate "
                "it with splml-eval, which rebuilds the run's training split as the database"
            )
        world = self.trainer.world_size if self._trainer is not None else 1
        loader = self.database(self.global_rank, world)
        was_training = self.model.training
        self.model.eval()
        # The precision (autocast) context of the evaluation steps, so queries and database match.
        precision = self.trainer.precision_plugin if self._trainer is not None else None
        with precision.forward_context() if precision is not None else contextlib.nullcontext():
            for batch in loader:
                embedding = self.model(batch["image"].to(self.device))["embedding"]
                target, index = batch["target"].to(self.device), batch["index"].to(self.device)
                self.database_items.update(embedding.float(), target, index)
        self.model.train(was_training)
        embeddings, labels, indices = self.database_items.compute()
        self.database_items.reset()
        return embeddings, labels, indices, loader

    def _evaluate(self, prefix: str, queries: EmbeddingCollector) -> tuple[dict[str, float], dict[str, Any]]:
        query_emb, query_labels, query_index = queries.compute()
        queries.reset()
        db_emb, db_labels, db_index, db_loader = self.embed_database()
        values = compute_retrieval_metrics(query_emb, query_labels, db_emb, db_labels, ks=self.ks)
        scalars = {f"{prefix}/{k}": float(v) for k, v in values.items()}
        # NaN (every query without a relevant item) would poison checkpoint monitoring.
        self.log_dict({k: v for k, v in scalars.items() if math.isfinite(v)}, sync_dist=False)
        arrays = {"query": (query_emb, query_labels, query_index), "database": (db_emb, db_labels, db_index),
                  "loader": db_loader}  # fmt: skip
        return scalars, arrays

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_queries.reset()
            return
        self.last_val_metrics, _ = self._evaluate("val", self.val_queries)

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics, arrays = self._evaluate("test", self.test_queries)
        if self.grid_queries > 0 and self.grid_top_k > 0 and self.trainer.is_global_zero:
            query_dataset = _dataset_of(self.trainer.test_dataloaders)
            self.write_grid(arrays, query_dataset, arrays["loader"].dataset)

    def write_grid(self, arrays: dict[str, Any], query_dataset: Any, database_dataset: Any) -> Path | None:
        """``retrieval_grid.png`` in the run folder (and to W&B): a few queries and their top-k retrieved images."""
        from splml.retrieval_grid import plot_retrieval_grid

        if not (hasattr(query_dataset, "display_image") and hasattr(database_dataset, "display_image")):
            return None
        query_emb, query_labels, query_index = arrays["query"]
        db_emb, db_labels, db_index = arrays["database"]
        picks = np.unique(np.linspace(0, len(query_index) - 1, min(self.grid_queries, len(query_index))).round())
        picks = picks.astype(int)
        ranked = top_k(query_emb[picks], db_emb, self.grid_top_k)
        shared = (query_labels[picks, None, :] * db_labels[ranked]).sum(-1)
        out = Path(self.trainer.default_root_dir) / "retrieval_grid.png"
        path = plot_retrieval_grid(
            queries=[query_dataset.display_image(int(query_index[p])) for p in picks],
            query_labels=[self._names(query_labels[p]) for p in picks],
            retrieved=[[database_dataset.display_image(int(db_index[j])) for j in row] for row in ranked],
            shared=shared.astype(int).tolist(),
            out_path=out,
        )
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger" and hasattr(logger, "log_image"):
                logger.log_image(key="retrieval_grid", images=[str(path)], step=self.global_step)
        return path

    def _names(self, labels: np.ndarray) -> list[str]:
        return [self.class_names[c] for c in np.flatnonzero(labels > 0.5)]


def _dataset_of(loaders: Any) -> Any:
    """The dataset behind Lightning's test loader(s) (the first, when there are several)."""
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)
