"""Metrics of a relabelled single-label set (ImageNet + ReaL): definitions, the accumulator, DDP, a CLI run."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score

from splml.metrics import MultiLabelMetricAccumulator, compute_metrics, compute_relabelled_metrics

from .helpers import run_train_cli
from .imagenet_support import REAL, imagenet_overrides, write_imagenet


def _problem(seed: int = 0, n: int = 40, num_classes: int = 6):
    rng = np.random.default_rng(seed)
    scores = rng.random((n, num_classes))
    original = rng.integers(0, num_classes, n)
    targets = (rng.random((n, num_classes)) < 0.2).astype(float)
    targets[np.arange(n), original] = 1.0
    has_target = rng.random(n) > 0.25
    targets[~has_target] = 0.0  # images left out of the relabelling have no label set
    return scores, targets, has_target, original


def test_relabelled_metrics_follow_the_papers_definitions():
    scores, targets, has_target, original = _problem()
    got = compute_relabelled_metrics(scores, targets, has_target, original)
    known = has_target
    # top-1 on the original labels: over every image; top-1 on the label sets: argmax in the set.
    assert got["top1_original"] == pytest.approx(100 * np.mean(scores.argmax(1) == original))
    hits = [targets[i, scores[i].argmax()] for i in np.flatnonzero(known)]
    assert got["top1_multilabel"] == pytest.approx(100 * np.mean(hits))
    assert got["top1_multilabel"] == pytest.approx(got["precision@1"])
    # mAP over the images with a label set only (mean over classes of sklearn's AP).
    aps = [average_precision_score(targets[known, c], scores[known, c]) for c in range(6)]
    assert got["mAP_macro"] == pytest.approx(100 * np.mean(aps))
    counts = targets[known].sum(1)
    sub = known.copy()
    sub[known] = counts == 2
    aps2 = [average_precision_score(targets[sub, c], scores[sub, c]) for c in range(6) if targets[sub, c].any()]
    assert got["mAP_macro_k2"] == pytest.approx(100 * np.mean(aps2))
    assert got["num_samples"] == known.sum() and got["num_samples_without_labels"] == (~known).sum()
    assert got["num_samples_original"] == 40
    # Every key of the plain metrics on the labelled images, unchanged.
    plain = compute_metrics(scores[known], targets[known])
    for key, value in plain.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key


def test_ties_go_to_the_lowest_class_and_no_original_label_is_left_out():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    targets = np.array([[1.0, 0, 0], [0, 0, 1]])
    got = compute_relabelled_metrics(scores, targets, np.array([True, True]), np.array([1, -1]))
    assert got["top1_multilabel"] == 50.0  # row 0 -> class 0 (hit), row 1 -> class 1 (miss)
    assert got["top1_original"] == 0.0 and got["num_samples_original"] == 1
    with pytest.raises(ValueError, match="original_labels"):
        compute_relabelled_metrics(scores, targets, np.array([True, True]), np.array([3, 0]))


def test_accumulator_adds_the_relabelled_keys_only_when_given():
    scores, targets, has_target, original = _problem(1)
    acc = MultiLabelMetricAccumulator(num_classes=6)
    probs, tgt = torch.from_numpy(scores).float(), torch.from_numpy(targets).float()
    for chunk in torch.randperm(40, generator=torch.Generator().manual_seed(0)).split(7):
        acc.update(
            probs[chunk], tgt[chunk], chunk, torch.from_numpy(original)[chunk], torch.from_numpy(has_target)[chunk]
        )
    pad = torch.tensor([0, 1])  # a DistributedSampler's padding repeats: counted once
    acc.update(probs[pad], tgt[pad], pad, torch.from_numpy(original)[pad], torch.from_numpy(has_target)[pad])
    got = acc.compute()
    expected = compute_relabelled_metrics(probs.double().numpy(), targets, has_target, original)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key
    plain = MultiLabelMetricAccumulator(num_classes=6)
    plain.update(probs, tgt, torch.arange(40))
    assert "top1_original" not in plain.compute()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    scores, targets, has_target, original = _problem(2, n=23)
    acc = MultiLabelMetricAccumulator(num_classes=6)
    # The sampler's split: every world-th index of the padded order (23 -> 24, index 0 repeated).
    order = list(range(23)) + [0]
    mine = torch.tensor(order[rank::world])
    acc.update(torch.from_numpy(scores).float()[mine], torch.from_numpy(targets).float()[mine], mine,
               torch.from_numpy(original)[mine], torch.from_numpy(has_target)[mine])  # fmt: skip
    result = acc.compute()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({k: (None if math.isnan(v) else v) for k, v in result.items()}, fh)
    dist.destroy_process_group()


def test_relabelled_metrics_under_ddp_equal_one_process(tmp_path):
    out = tmp_path / "rank0.json"
    mp.spawn(_rank_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    scores, targets, has_target, original = _problem(2, n=23)
    expected = compute_relabelled_metrics(torch.from_numpy(scores).float().double().numpy(), targets, has_target,
                                          original)  # fmt: skip
    assert got["num_samples_original"] == 23 and got["num_samples"] == has_target.sum()
    for key, value in expected.items():
        if math.isnan(value):
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.slow
def test_training_on_the_imagenet_tree_reports_the_real_metrics(tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    run_dir = tmp_path / "run"
    run_train_cli(
        tmp_path, *imagenet_overrides(root), "loss=en_scl", "trainer.max_epochs=2", "optim.linear_probe_epochs=1",
        # The Table 3 preset's evaluation: every training image trains, the last epoch is tested.
        "dataset.datamodule.val_fraction=0", "callbacks.model_checkpoint.monitor=epoch",
        f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert results["best_epoch"] == 1 and results["best_metric"] == "epoch"
    assert results["test/num_samples_original"] == 8  # every validation image counts for top-1
    assert results["test/num_samples"] == sum(1 for x in REAL if x)  # ReaL metrics on the labelled ones
    assert results["test/num_samples_without_labels"] == sum(1 for x in REAL if not x)
    for key in ("test/top1_original", "test/top1_multilabel", "test/mAP_macro", "test/mAP_macro_k1"):
        assert 0.0 <= results[key] <= 100.0, key
    assert results["config"]["loss"]["term"]["topk"] == 2  # dataset.scl_topk
    assert results["choices"]["labels"] == "observed"
