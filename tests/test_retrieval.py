"""task=retrieval: model, training views, database loader, configs, and whole runs through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from splml.builders import build_datamodule, build_module, config_dir, register_resolvers
from splml.data.display import multispectral_rgb, percentile_stretch
from splml.data.views import MultiViewDataset
from splml.methods.contrastive.base import ContrastiveLoss
from splml.methods.registry import loss_names, methods
from splml.models.projection import ProjectionHead, RetrievalModel
from splml.report import main as report_main
from splml.retrieval_module import RetrievalModule
from splml.train import best_score, train

from .helpers import TINY_DATA, compose_train, run_train_cli
from .image_support import aid_label_rows, write_image

RETRIEVAL_LOSSES = loss_names("retrieval")


class _Backbone(torch.nn.Module):
    num_features = 5

    def forward(self, x):
        return x[:, :5].clone()


# --------------------------------------------------------------------------- model


def test_model_embeds_views_and_ranks_by_the_chosen_vector():
    image = torch.randn(3, 2, 6, 4, 4)  # B x V x C x H x W
    for embedding, key in (("backbone", "features"), ("projection", "z")):
        model = RetrievalModel(_Backbone(), ProjectionHead(5, out_dim=7, hidden_dim=9), embedding=embedding)
        out = model(image)
        assert out["features"].shape == (3, 2, 5) and out["z"].shape == (3, 2, 7)
        assert torch.allclose(out["z"].norm(dim=-1), torch.ones(3, 2))
        expected = torch.nn.functional.normalize(out[key], dim=-1)
        assert torch.allclose(out["embedding"], expected)
        single = model(image[:, 0])
        assert torch.allclose(single["z"], out["z"][:, 0], atol=1e-6), "views are embedded like single images"
    with pytest.raises(ValueError, match="task.embedding"):
        RetrievalModel(_Backbone(), ProjectionHead(5), embedding="logits")


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def retrieval_datamodule(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm")
    cfg = compose_train(tmp, "task=retrieval", "labels=full", "dataset.datamodule.image_size=32")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_training_batches_carry_two_recorded_views_per_image(retrieval_datamodule):
    dm = retrieval_datamodule
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[:2] == (16, 2) and batch["aug"]["crop"].shape == (16, 2, 4)
    assert batch["target"].shape == (16, 19) and batch["index"].shape == (16,)
    # View 0 is exactly the single-view item of the same key; view 1 is another draw.
    train = dm.datasets["train"]
    key = next(iter(dm.train_dataloader().sampler))
    two = MultiViewDataset(train, 2)[key]
    assert torch.equal(two["image"][0], train[key]["image"])
    assert not torch.equal(two["image"][0], two["image"][1])
    assert torch.equal(MultiViewDataset(train, 2)[key]["image"], two["image"]), "views repeat for the same key"


def test_views_without_augmentation_are_refused(retrieval_datamodule):
    from splml.data.datamodules.base import without_augmentation

    with pytest.raises(ValueError, match="need training augmentation"):
        MultiViewDataset(without_augmentation(retrieval_datamodule.datasets["train"]), 2)


def test_database_is_the_unaugmented_training_split_split_across_ranks(retrieval_datamodule):
    dm = retrieval_datamodule
    train = dm.datasets["train"]
    seen = []
    for rank in (0, 1):
        for batch in dm.database_dataloader(rank=rank, world_size=2):
            assert "aug" not in batch and batch["image"].ndim == 4
            seen += batch["index"].tolist()
            first = int(batch["index"][0])
            assert torch.equal(batch["image"][0], train.read_bands(first, normalize=True))
    assert sorted(set(seen)) == list(range(len(train)))
    assert train.transform is not None, "the training split keeps its augmentation"


def test_display_images_stretch_each_band():
    band = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    out = percentile_stretch(np.concatenate([band, np.full_like(band, 7.0)]))
    assert out.shape == (10, 10, 2) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and out[..., 1].min() == out[..., 1].max() == 128
    bands = np.stack([np.full((4, 4), float(v)) for v in range(4)]) + np.random.default_rng(0).random((4, 4, 4))
    rgb = multispectral_rgb(bands, ["B02", "B03", "B04", "VV"])
    assert np.array_equal(rgb, percentile_stretch(bands[[2, 1, 0]]))
    grey = multispectral_rgb(bands[3:], ["VV"])
    assert np.array_equal(grey[..., 0], grey[..., 2])


# --------------------------------------------------------------------------- configs


def _compose(tmp_path: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_task_defaults_classification_and_retrieval_changes_what_differs(tmp_path):
    default = _compose(tmp_path)
    assert default.task.name == "classification"
    assert default.callbacks.model_checkpoint.monitor == "val/mAP_macro"
    assert default.loss._target_.endswith("AssumeNegativeLoss")
    retrieval = _compose(tmp_path, "task=retrieval")
    assert retrieval.task.name == "retrieval" and retrieval.task.train_views == 2
    assert retrieval.loss._target_.endswith("SupConLoss")
    assert retrieval.callbacks.model_checkpoint.monitor == "val/mAP@100"
    assert list(retrieval.dataset.datamodule.augment.crop_scale) == [0.5, 1.0]
    picked = _compose(tmp_path, "task=retrieval", "loss=macl", "task.module.summary_k=20", "dataset=dlrsd")
    assert picked.loss._target_.endswith("MACLLoss")
    assert picked.callbacks.model_checkpoint.monitor == "val/mAP@20"
    assert list(picked.dataset.datamodule.augment.crop_scale) == [0.5, 1.0]


@pytest.mark.parametrize(
    ("ablation", "changed"),
    [
        ("macl_no_weighting", {"weighting": False}),
        ("macl_no_overlap_temperature", {"alpha": 0.0}),
        ("macl_fixed_temperature", {"alpha": 0.0, "beta": 0.0}),
        ("macl_pair_denominator", {"denominator": "pair"}),
    ],
)
def test_macl_ablation_variants_switch_off_one_part_each(tmp_path, ablation, changed):
    full = _compose(tmp_path, "experiment=retrieval_synthetic", "loss=macl").loss
    variant = _compose(tmp_path, "experiment=retrieval_synthetic", "loss=macl", f"ablation={ablation}").loss
    assert {k: variant[k] for k in changed} == changed
    assert {k: v for k, v in variant.items() if k not in changed} == {k: v for k, v in full.items() if k not in changed}
    assert {k: full[k] for k in changed} != changed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=macl"], "loss=macl is a contrastive retrieval loss and needs task=retrieval"),
        (["task=retrieval", "loss=an"], "loss=an is a classification loss, but task=retrieval"),
    ],
)
def test_a_loss_of_the_other_task_is_refused_by_name(tmp_path, overrides, message):
    cfg = _compose(tmp_path, *overrides)
    with pytest.raises(ValueError, match=message):
        build_module(cfg, data=None)  # refused before the data is looked at


def test_the_retrieval_losses_are_exactly_the_contrastive_ones():
    for m in methods().values():
        assert (m.task == "retrieval") == issubclass(m.loss, ContrastiveLoss), m.name
    assert {"supcon", "jaccard_supcon", "mulsupcon", "macl"} <= set(RETRIEVAL_LOSSES)
    assert "an" in loss_names("classification") and not set(loss_names("classification")) & set(RETRIEVAL_LOSSES)


def test_every_retrieval_loss_builds_the_retrieval_module(tmp_path, retrieval_datamodule):
    for loss in RETRIEVAL_LOSSES:
        module = build_module(_compose(tmp_path, "task=retrieval", f"loss={loss}", "backbone=resnet10t"),
                              retrieval_datamodule)  # fmt: skip
        assert isinstance(module, RetrievalModule) and module.loss.name == loss
        assert module.summary_metrics[0] == "test/mAP@100"


def test_the_best_score_is_read_under_the_metric_the_run_names():
    assert best_score({"best_metric": "val/mAP@100", "val/mAP@100_best": 41.5, "val/mAP_macro_best": 3.0}) == 41.5
    assert best_score({"val/mAP_macro_best": 62.0}) == 62.0, "results written before best_metric existed"


# --------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory) -> Path:
    """Two epochs of MACL from single positives (labels=random) on the tiny synthetic data."""
    base = tmp_path_factory.mktemp("retrieval_cli")
    run_dir = base / "run"
    run_train_cli(base, "task=retrieval", "loss=macl", "labels=random", "trainer.max_epochs=2",
                  "dataset.datamodule.image_size=32", *TINY_DATA, f"paths.cache_dir={base / 'cache'}",
                  f"hydra.run.dir={run_dir}", "seed=2")  # fmt: skip
    return run_dir


def test_retrieval_run_writes_its_metrics_checkpoint_and_grid(retrieval_run):
    results = json.loads((retrieval_run / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["task"] == "retrieval"
    assert results["best_metric"] == "val/mAP@100" and 0 < results["val/mAP@100_best"] <= 100
    for k in ("20", "50", "100", "all"):
        for metric in ("mAP", "precision", "nDCG"):
            assert 0 <= results[f"test/{metric}@{k}"] <= 100
        assert results[f"test/ACG@{k}"] >= 0 and results[f"test/WAP@{k}"] >= 0
    # Every query and every database item counts once: 24 test images against 48 training images.
    assert results["test/num_queries"] == 24 and results["test/num_database"] == 48
    assert results["summary_metrics"] == ["test/mAP@100", "test/mAP@all", "test/nDCG@100", "test/WAP@100"]
    assert results["config"]["task"]["embedding"] == "backbone"
    assert (retrieval_run / "retrieval_grid.png").stat().st_size > 0
    assert (retrieval_run / "checkpoints" / "best.ckpt").is_file()
    header = (retrieval_run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/mAP@100", "train/loss", "train/temperature_mean"} <= set(header)
    observed = np.load(retrieval_run / "observed_train_labels.npy")
    assert (observed.sum(1) == 1).all(), "trained from single positives"


def test_eval_of_a_retrieval_checkpoint_reproduces_its_test_metrics(retrieval_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "splml.eval", f"ckpt_path={retrieval_run / 'checkpoints' / 'best.ckpt'}",
         f"output_file={out}", f"hydra.run.dir={tmp_path / 'eval_run'}"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    evaluated = json.loads(out.read_text())
    trained = json.loads((retrieval_run / "results.json").read_text())
    for key in ("test/mAP@20", "test/mAP@all", "test/nDCG@100", "test/ACG@50", "test/WAP@100", "test/precision@20"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    assert (tmp_path / "eval_run" / "retrieval_grid.png").is_file()


def test_report_on_retrieval_runs_takes_its_columns_from_the_results(retrieval_run, tmp_path, capsys):
    report_main([str(retrieval_run), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "table.md").read_text()
    assert table.splitlines()[0].startswith("| dataset | labels | loss | backbone | test/mAP@100 | test/mAP@all |")
    row = next(line for line in table.splitlines() if line.startswith("| synthetic"))
    assert "| macl |" in row and "missing" not in row
    assert (tmp_path / "report" / "curves_synthetic_random.png").is_file(), "curves of val/mAP@100"


def test_retrieval_on_an_rgb_image_folder_dataset(tmp_path):
    """DLRSD layout (RGB TIFFs + label table): views, database, metrics and grid on the image reader."""
    stems = [f"{c}{k:02d}" for c in ("airplane", "beach", "forest") for k in range(8)]
    for k, stem in enumerate(stems):
        write_image(tmp_path / "data" / "Images" / stem.rstrip("0123456789") / f"{stem}.tif", (24, 24), seed=k)
    rows = aid_label_rows(stems, seed=1)
    lines = [f"{stem}," + ",".join(str(int(v)) for v in rows[stem]) for stem in stems]
    (tmp_path / "data" / "multilabels.csv").write_text("\n".join(lines) + "\n")
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "task=retrieval", "dataset=dlrsd", f"dataset.root={tmp_path / 'data'}", "labels=full",
            "backbone=resnet10t", "trainer.max_epochs=1", "dataset.datamodule.image_size=32",
            "dataset.datamodule.num_workers=0", "dataset.datamodule.persistent_workers=false",
            "dataset.datamodule.pin_memory=false", "dataset.datamodule.batch_size=6",
            "++trainer.enable_progress_bar=false", "~callbacks.progress_bar", "task.module.grid_queries=2",
        ])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    results = train(cfg)
    assert results["test/num_queries"] == 5 and results["test/num_database"] == 15  # 24 -> 19 + 5; 19 -> 15 + 4
    assert np.isfinite(results["test/mAP@all"]) and (tmp_path / "run" / "retrieval_grid.png").is_file()


def test_ddp_retrieval_counts_every_query_once_and_matches_one_process(tmp_path):
    """2 ranks, odd split sizes (padding): the DDP test metrics equal a one-process eval of the same weights."""
    run_dir = tmp_path / "ddp"
    run_train_cli(
        tmp_path, "task=retrieval", "trainer=ddp_cpu", "trainer.max_epochs=1", "backbone=resnet10t",
        "dataset.datamodule.synthetic.n_train=45", "dataset.datamodule.synthetic.n_validation=21",
        "dataset.datamodule.synthetic.n_test=23", "dataset.datamodule.image_size=32",
        "dataset.datamodule.batch_size=8", "task.module.grid_queries=0", f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    ddp = json.loads((run_dir / "results.json").read_text())
    assert ddp["test/num_queries"] == 23 and ddp["test/num_database"] == 45
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "splml.eval", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
         f"output_file={out}", f"hydra.run.dir={tmp_path / 'eval_run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = json.loads(out.read_text())
    for key in ("test/mAP@20", "test/mAP@all", "test/nDCG@50", "test/WAP@100", "test/precision@all"):
        assert single[key] == pytest.approx(ddp[key], abs=1e-4), key
