"""Retrieval metrics against brute-force loops over each query (and scikit-learn where it has one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from splml.retrieval_metrics import (
    EmbeddingCollector,
    compute_retrieval_metrics,
    per_query_retrieval_metrics,
    top_k,
)


def _problem(seed: int, nq: int = 23, nd: int = 157, num_labels: int = 6, dim: int = 8):
    """Random embeddings loosely tied to random multi-labels; a few queries share nothing with the database."""
    rng = np.random.default_rng(seed)
    yq = (rng.random((nq, num_labels)) < 0.3).astype(np.float32)
    yd = (rng.random((nd, num_labels)) < 0.3).astype(np.float32)
    yd[:, -1] = 0  # label L-1 only occurs in queries: a query with only that label has no relevant item
    yq[0] = 0
    yq[0, -1] = 1
    basis = rng.normal(size=(num_labels, dim))
    q = yq @ basis + rng.normal(size=(nq, dim))
    d = yd @ basis + rng.normal(size=(nd, dim))
    return q, yq, d, yd


def _brute_force(q, yq, d, yd, k):
    """Each metric of one cut-off by a plain loop over queries and ranks (definitions of the module)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    out = {"mAP": [], "precision": [], "nDCG": [], "ACG": [], "WAP": []}
    for i in range(len(q)):
        sims = dn @ qn[i]
        order = sorted(range(len(d)), key=lambda j: (-sims[j], j))
        shared = [int(np.dot(yq[i], yd[j])) for j in order]
        if max(int(np.dot(yq[i], yd[j])) for j in range(len(d))) == 0:
            continue
        kk = len(d) if k == "all" else min(k, len(d))
        hits, ap, wap, cum = 0, 0.0, 0.0, 0
        dcg = 0.0
        for rank in range(1, kk + 1):
            s = shared[rank - 1]
            cum += s
            dcg += (2**s - 1) / math.log2(rank + 1)
            if s > 0:
                hits += 1
                ap += hits / rank
                wap += cum / rank
        ideal = sorted(shared, reverse=True)
        idcg = sum((2**s - 1) / math.log2(r + 2) for r, s in enumerate(ideal[:kk]))
        out["mAP"].append(ap / hits if hits else 0.0)
        out["WAP"].append(wap / hits if hits else 0.0)
        out["precision"].append(hits / kk)
        out["ACG"].append(cum / kk)
        out["nDCG"].append(dcg / idcg)
    return {name: float(np.mean(v)) for name, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 5, 20, 157, 400, "all"])
def test_every_metric_matches_a_brute_force_loop(seed, k):
    q, yq, d, yd = _problem(seed)
    ours = compute_retrieval_metrics(q, yq, d, yd, ks=[k])
    expected = _brute_force(q, yq, d, yd, k)
    name = "all" if k == "all" else str(k)
    for metric, value in expected.items():
        scale = 1.0 if metric in ("ACG", "WAP") else 100.0
        assert ours[f"{metric}@{name}"] == pytest.approx(scale * value, abs=1e-9), metric


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_all_is_sklearn_average_precision_per_query(seed):
    q, yq, d, yd = _problem(seed)
    values, valid = per_query_retrieval_metrics(q, yq, d, yd, ks=["all"])
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    relevant = (yq @ yd.T) > 0
    reference = [average_precision_score(relevant[i], sims[i]) for i in np.flatnonzero(valid)]
    np.testing.assert_allclose(values["mAP@all"][valid], reference, atol=1e-12)
    assert compute_retrieval_metrics(q, yq, d, yd, ks=["all"])["mAP@all"] == pytest.approx(100 * np.mean(reference))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("k", [1, 5, 20, 100, 157])
def test_map_at_k_matches_torchmetrics_retrieval_map(seed: int, k: int) -> None:
    """Our mAP@K against torchmetrics' RetrievalMAP(top_k=K), one retrieval group per query.

    torchmetrics ranks each query's database (N_query x N_database similarities, flattened with
    the query as the group index) and averages AP over the relevant items in the top K; a query
    without any relevant item is skipped, as in our convention.
    """
    from torchmetrics.retrieval import RetrievalMAP

    q, yq, d, yd = _problem(seed)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    # torchmetrics counts an item with a score <= 0 as not retrieved; 2 + cosine keeps the ranking.
    sims = torch.from_numpy(2.0 + qn @ dn.T)
    relevant = torch.from_numpy(yq @ yd.T > 0)
    groups = torch.arange(len(q))[:, None].expand_as(sims)
    metric = RetrievalMAP(top_k=k, empty_target_action="skip")
    reference = float(metric(sims.flatten(), relevant.flatten(), indexes=groups.flatten()))
    ours = compute_retrieval_metrics(q, yq, d, yd, ks=[k])
    assert ours["num_queries_without_relevant"] >= 1  # the skipped query exists
    assert ours[f"mAP@{k}"] == pytest.approx(100 * reference, abs=1e-4)


@pytest.mark.parametrize("k", [10, 50])
def test_ndcg_matches_sklearn_with_exponential_gains(k):
    q, yq, d, yd = _problem(3)
    values, valid = per_query_retrieval_metrics(q, yq, d, yd, ks=[k])
    sims = q @ d.T / np.linalg.norm(q, axis=1, keepdims=True) / np.linalg.norm(d, axis=1)
    gains = 2.0 ** (yq @ yd.T) - 1
    reference = [ndcg_score(gains[i : i + 1], sims[i : i + 1], k=k) for i in np.flatnonzero(valid)]
    np.testing.assert_allclose(values[f"nDCG@{k}"][valid], reference, atol=1e-12)


def test_queries_without_relevant_items_are_left_out_and_counted():
    q, yq, d, yd = _problem(0)
    metrics = compute_retrieval_metrics(q, yq, d, yd)
    assert metrics["num_queries_without_relevant"] >= 1
    assert metrics["num_queries"] == 23 and metrics["num_database"] == 157
    kept = yq[:, :-1].sum(1) > 0
    # Only queries with an item to find enter the mean; the others would pull every metric to 0.
    assert compute_retrieval_metrics(q[kept], yq[kept], d, yd)["mAP@20"] == pytest.approx(metrics["mAP@20"])


def test_perfect_and_reversed_rankings():
    yd = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 3]]
    yq = np.eye(4, dtype=np.float32)[[0]]
    perfect = compute_retrieval_metrics(yq, yq, yd, yd, ks=[2, "all"])
    assert perfect["mAP@2"] == perfect["mAP@all"] == perfect["precision@2"] == perfect["nDCG@all"] == 100.0
    assert perfect["ACG@2"] == 1.0 and perfect["WAP@all"] == 1.0
    assert perfect["precision@all"] == pytest.approx(100 * 2 / 6)
    worst = compute_retrieval_metrics(-yq + 0.01, yq, yd, yd, ks=[2, "all"])
    assert worst["mAP@2"] == 0.0 and worst["precision@2"] == 0.0
    assert worst["mAP@all"] == pytest.approx(100 * (1 / 5 + 2 / 6) / 2)


def test_chunking_does_not_change_results():
    q, yq, d, yd = _problem(4)
    whole = compute_retrieval_metrics(q, yq, d, yd)
    chunked = compute_retrieval_metrics(q, yq, d, yd, chunk_elements=157 * 2)  # 2 queries per chunk
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, nan_ok=True), key


def test_cosine_similarity_ignores_embedding_scale():
    q, yq, d, yd = _problem(5)
    scaled = compute_retrieval_metrics(q * 7.0, yq, d * np.linspace(0.1, 3, len(d))[:, None], yd)
    assert scaled == pytest.approx(compute_retrieval_metrics(q, yq, d, yd), nan_ok=True)


def test_top_k_orders_by_similarity():
    d = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert top_k(np.array([[1.0, 0.1]]), d, 2).tolist() == [[0, 2]]
    assert top_k(np.array([[0.0, 1.0]]), d, 10).tolist() == [[1, 2, 0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ks": [0]}, "positive integers"),
        ({"ks": ["top"]}, "positive integers"),
    ],
)
def test_bad_cutoffs_are_errors(kwargs, match):
    q, yq, d, yd = _problem(0)
    with pytest.raises(ValueError, match=match):
        compute_retrieval_metrics(q, yq, d, yd, **kwargs)


def test_bad_inputs_are_errors():
    q, yq, d, yd = _problem(0)
    with pytest.raises(ValueError, match="disagree"):
        compute_retrieval_metrics(q, yq[:-1], d, yd)
    with pytest.raises(ValueError, match="0/1"):
        compute_retrieval_metrics(q, yq * 2, d, yd)
    with pytest.raises(ValueError, match="zero vector"):
        compute_retrieval_metrics(np.zeros_like(q), yq, d, yd)
    with pytest.raises(ValueError, match="non-finite"):
        compute_retrieval_metrics(q * np.nan, yq, d, yd)


def test_collector_deduplicates_padding_and_orders_by_index():
    collector = EmbeddingCollector()
    emb = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    labels = torch.eye(5)[:, :3]
    collector.update(emb[[3, 1, 4]], labels[[3, 1, 4]], torch.tensor([3, 1, 4]))
    collector.update(emb[[0, 2, 3]], labels[[0, 2, 3]], torch.tensor([0, 2, 3]))  # 3 again: sampler padding
    embeddings, got_labels, indices = collector.compute()
    assert indices.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(embeddings, emb.numpy())
    np.testing.assert_array_equal(got_labels, labels.numpy())
