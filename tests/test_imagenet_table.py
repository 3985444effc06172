"""experiment=table_imagenet_real: the spatial-consistency paper's Table 3 recipe (ImageNet-1K, ReaL)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from splml.builders import config_dir, register_resolvers


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_table_sweeps_the_papers_rows_with_its_recipe():
    cfg = _compose("experiment=table_imagenet_real")
    assert set(str(cfg.hydra.sweeper.params.loss).split(",")) == {"an", "en_cl", "en_scl"}
    assert cfg.dataset.name == "imagenet" and cfg.labels._target_.endswith("DatasetSinglePositive")
    assert cfg.backbone.name == "resnet50" and cfg.backbone.pretrained
    assert cfg.dataset.datamodule.image_size == 224 and list(cfg.dataset.datamodule.augment.crop_scale) == [0.08, 1.0]
    assert cfg.dataset.expected_positives == 1.22
    assert (cfg.optim.linear_probe_epochs, cfg.optim.linear_probe_lr, cfg.optim.lr) == (5, 1e-4, 1e-4)
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optim.scheduler._target_ == "splml.optim.linear_probe_warmup_cosine"
    assert cfg.trainer.max_epochs == 30
    # Trained on every training image, reported at the end of fine-tuning.
    assert cfg.dataset.datamodule.val_fraction == 0.0 and cfg.callbacks.model_checkpoint.monitor == "epoch"


def test_scl_keeps_the_ten_top_scoring_classes_after_the_warm_up():
    cfg = _compose("experiment=table_imagenet_real", "loss=en_scl")
    assert cfg.loss.start_epoch == 5 and cfg.loss.term.topk == 10 and cfg.loss.term.topk_from_epoch == 5
    stores = {type(c).__name__: c for c in instantiate(cfg.loss).callbacks(100, 1000)}
    score_store, heatmap_store = stores["ScoreStore"], stores["HeatmapStore"]
    assert (heatmap_store.topk, heatmap_store.topk_from_epoch) == (10, 5)
    assert score_store.expected_positives == 1.22
    # Other datasets keep every class, from the first update, as before.
    other = _compose("loss=en_scl")
    assert other.loss.term.topk is None and other.loss.term.topk_from_epoch == 0
