"""Multi-label image retrieval metrics: rank a database by cosine similarity to each query.

Every query (test split) is compared with every database item (training split); the database
is ranked by decreasing cosine similarity of the embeddings. With ``s_j`` = the number of labels
the item at rank ``j`` (1-based) shares with the query and ``rel_j = [s_j > 0]`` (relevant = at
least one shared label), for a cut-off ``K`` (capped at the database size; ``all`` = the whole
database):

* ``precision@K = (1/K) sum_{j<=K} rel_j``
* ``mAP@K``: mean over queries of ``AP@K = (1/R_K) sum_{j<=K} rel_j precision@j`` with
  ``R_K = sum_{j<=K} rel_j`` the relevant items retrieved in the top K (the convention of the
  hashing/retrieval literature's ``mAP@K``); ``AP@K = 0`` when the top K hold no relevant item.
  ``mAP@all`` is the non-interpolated AP of ``sklearn.metrics.average_precision_score`` on the
  whole ranking.
* ``nDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum_{j<=K} (2^{s_j} - 1) / log2(j + 1)`` and IDCG the
  DCG of the ideal ranking (database sorted by ``s`` decreasing).
* ``ACG@K = (1/K) sum_{j<=K} s_j`` (average cumulative gain: mean number of shared labels in the
  top K).
* ``WAP@K = (1/R_K) sum_{j<=K} rel_j ACG@j`` (weighted AP, Zhao et al., *Deep Semantic Ranking
  Based Hashing for Multi-Label Image Retrieval*, CVPR 2015): AP with the precision at each
  relevant position replaced by the ACG there; 0 when the top K hold no relevant item.

Conventions: mAP, precision and nDCG are percentages (0..100); ACG and WAP are in labels (a
mean count of shared labels). A query with no relevant item in the whole database has nothing
to find: every metric is undefined for it, so it is left out of every mean and counted in
``num_queries_without_relevant``. Ties in similarity are broken by database order (stable
sort); with float embeddings ties only occur for identical images. ``precision@all`` and
``ACG@all`` do not depend on the ranking: they are the chance level of the data.

Queries are processed in chunks so that the ``queries x database`` similarity and its ranking
never exceed :data:`CHUNK_ELEMENTS` entries at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: Upper bound on the entries of one chunk of the query x database similarity matrix.
CHUNK_ELEMENTS = 1 << 20

#: The cut-offs reported by default (``"all"`` = the whole database).
DEFAULT_KS: tuple[int | str, ...] = (20, 50, 100, "all")

METRIC_NAMES = ("mAP", "precision", "nDCG", "ACG", "WAP")


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def _normalised(x: np.ndarray, name: str) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain {int((~np.isfinite(x)).sum())} non-finite value(s)")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is the zero vector (no direction)")
    return x / norms


def _binary(labels: np.ndarray, name: str) -> np.ndarray:
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1 label vectors (the full labels)")
    return labels.astype(np.float32)


def cutoff_name(k: int | str) -> str:
    """``"20"`` or ``"all"``: how a cut-off appears in metric names (``mAP@20``, ``mAP@all``)."""
    return "all" if k == "all" else str(int(k))


def _check_ks(ks: Sequence[int | str]) -> list[int | str]:
    out: list[int | str] = []
    for k in ks:
        if k == "all":
            out.append("all")
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1:
            out.append(int(k))
        else:
            raise ValueError(f"cut-offs must be positive integers or 'all', got {k!r}")
    return out


def similarity_ranking(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Database indices ordered by decreasing cosine similarity, one row per query (stable ties)."""
    sims = _normalised(query, "query embeddings") @ _normalised(database, "database embeddings").T
    return np.argsort(-sims, axis=1, kind="stable")


def top_k(query: Any, database: Any, k: int) -> np.ndarray:
    """The ``k`` most similar database indices per query (``nq x min(k, nd)``), most similar first."""
    q, d = _as_array(query, "query embeddings"), _as_array(database, "database embeddings")
    return similarity_ranking(q, d)[:, : min(int(k), d.shape[0])]


def _chunk_values(order: np.ndarray, shared: np.ndarray, ks: list[int | str]) -> dict[str, np.ndarray]:
    """Per-query metric values (fractions / label counts) of one chunk, from its ranking and shared counts."""
    nd = order.shape[1]
    gains_sorted = np.take_along_axis(shared, order, axis=1)
    rel = (gains_sorted > 0).astype(np.float64)
    positions = np.arange(1, nd + 1, dtype=np.float64)
    retrieved = np.cumsum(rel, axis=1)  # R_j
    cum_gain = np.cumsum(gains_sorted, axis=1)
    precision_at = retrieved / positions
    acg_at = cum_gain / positions
    ap_terms = np.cumsum(rel * precision_at, axis=1)
    wap_terms = np.cumsum(rel * acg_at, axis=1)
    discount = 1.0 / np.log2(positions + 1.0)
    dcg = np.cumsum((np.exp2(gains_sorted) - 1.0) * discount, axis=1)
    ideal = -np.sort(-shared, axis=1)
    idcg = np.cumsum((np.exp2(ideal) - 1.0) * discount, axis=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        j = (nd if k == "all" else min(int(k), nd)) - 1
        name = cutoff_name(k)
        found = retrieved[:, j]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"mAP@{name}"] = np.where(found > 0, ap_terms[:, j] / found, 0.0)
            out[f"WAP@{name}"] = np.where(found > 0, wap_terms[:, j] / found, 0.0)
            out[f"nDCG@{name}"] = np.where(idcg[:, j] > 0, dcg[:, j] / idcg[:, j], np.nan)
        out[f"precision@{name}"] = precision_at[:, j]
        out[f"ACG@{name}"] = acg_at[:, j]
    return out


def per_query_retrieval_metrics(
    query_embeddings: Any,
    query_labels: Any,
    database_embeddings: Any,
    database_labels: Any,
    ks: Sequence[int | str] = DEFAULT_KS,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every metric of every query (fractions, ACG/WAP in labels), and which queries have a relevant item.

    Returns ``(values, valid)``: ``values[name]`` is a length-``nq`` array, ``valid`` a boolean
    array marking the queries with at least one relevant database item (the others are
    undefined and must be left out of any mean, see the module docstring).
    """
    q = _as_array(query_embeddings, "query embeddings")
    d = _as_array(database_embeddings, "database embeddings")
    yq = _binary(_as_array(query_labels, "query labels"), "query labels")
    yd = _binary(_as_array(database_labels, "database labels"), "database labels")
    if q.shape[0] != yq.shape[0] or d.shape[0] != yd.shape[0]:
        raise ValueError(
            f"embeddings and labels disagree: {q.shape[0]} queries / {yq.shape[0]} label rows, "
            f"{d.shape[0]} database items / {yd.shape[0]} label rows"
        )
    if q.shape[1] != d.shape[1] or yq.shape[1] != yd.shape[1]:
        raise ValueError(
            f"query and database differ in width: embeddings {q.shape} / {d.shape}, labels {yq.shape} / {yd.shape}"
        )
    if q.shape[0] == 0 or d.shape[0] == 0:
        raise ValueError(f"need at least one query and one database item, got {q.shape[0]} and {d.shape[0]}")
    ks = _check_ks(ks)
    q, d = _normalised(q, "query embeddings"), _normalised(d, "database embeddings")
    chunk = max(1, int(chunk_elements) // d.shape[0])
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, q.shape[0], chunk):
        stop = start + chunk
        order = np.argsort(-(q[start:stop] @ d.T), axis=1, kind="stable")
        shared = (yq[start:stop] @ yd.T).astype(np.float64)
        parts.append(_chunk_values(order, shared, ks))
    values = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    valid = (yq @ yd.T).max(axis=1) > 0
    return values, valid


def compute_retrieval_metrics(
    query_embeddings: Any,
    query_labels: Any,
    database_embeddings: Any,
    database_labels: Any,
    ks: Sequence[int | str] = DEFAULT_KS,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, float]:
    """The retrieval metrics of the module docstring, averaged over the queries, as a flat dict.

    Keys: ``mAP@K``, ``precision@K``, ``nDCG@K`` (percent), ``ACG@K``, ``WAP@K`` (labels) for each
    cut-off, and the counts ``num_queries``, ``num_database``, ``num_queries_without_relevant``.
    """
    values, valid = per_query_retrieval_metrics(
        query_embeddings, query_labels, database_embeddings, database_labels, ks, chunk_elements
    )
    out: dict[str, float] = {}
    for name, per_query in values.items():
        kept = per_query[valid]
        mean = float(kept.mean()) if kept.size else float("nan")
        out[name] = mean if name.startswith(("ACG@", "WAP@")) else 100.0 * mean
    out["num_queries"] = float(valid.size)
    out["num_database"] = float(_as_array(database_labels, "database labels").shape[0])
    out["num_queries_without_relevant"] = float((~valid).sum())
    return out


class EmbeddingCollector(Metric):
    """Collects ``(embeddings, full labels, dataset index)`` over an epoch, gathered over DDP ranks.

    The distributed sampler pads the last round by repeating samples; :meth:`compute` keeps the
    first row of each dataset index (ordered by index), so every query and every database item
    counts exactly once, as :class:`splml.metrics.MultiLabelMetricAccumulator` does for scores.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor, indices: Tensor) -> None:  # type: ignore[override]
        if embeddings.ndim != 2 or labels.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(
                f"embeddings B x D and labels B x L expected, got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        indices = torch.as_tensor(indices, device=embeddings.device).reshape(-1)
        if indices.numel() != embeddings.shape[0]:
            raise ValueError(f"indices must have {embeddings.shape[0]} entries, got {indices.numel()}")
        self.embeddings.append(embeddings.detach().float())
        self.labels.append(labels.detach().float())
        self.indices.append(indices.detach().long())

    def compute(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[override]
        """``(embeddings, labels, indices)`` as numpy arrays, one row per dataset index, by index."""
        if isinstance(self.indices, list) and len(self.indices) == 0:
            raise ValueError("EmbeddingCollector.compute() called before any update()")
        embeddings = dim_zero_cat(self.embeddings).cpu().numpy()
        labels = dim_zero_cat(self.labels).cpu().numpy()
        indices = dim_zero_cat(self.indices).cpu().numpy()
        unique, first = np.unique(indices, return_index=True)
        return embeddings[first], labels[first], unique
