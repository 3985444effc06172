"""What a TensorBoard run receives: the resolved config, the learning rates, curves and figures.

(The W&B side is checked through the command line in ``test_train_cli.py``.)
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from splml.io.run_folder import read_epoch_metrics
from splml.train import train

from .helpers import compose_train


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of LL-Ct (it logs label-quality diagnostics from epoch 2) with TensorBoard alone."""
    base = tmp_path_factory.mktemp("tensorboard")
    cfg = compose_train(
        base / "run", "logger=tensorboard", "loss=ll_ct", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
        "optim.head_lr_mult=10", cache_dir=base / "cache",
    )  # fmt: skip
    train(cfg)
    return base / "run"


def test_tensorboard_run_gets_the_resolved_config_as_hyperparameters(tensorboard_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = _events(tensorboard_run / "tensorboard")
    content = events.PluginTagToContent("hparams")
    assert content, "no hyperparameters in the TensorBoard run"
    plugin = {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}
    start = next(p.session_start_info for p in plugin.values() if p.HasField("session_start_info"))
    hparams = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for key, value in
               start.hparams.items()}  # fmt: skip
    assert hparams["optim/lr"] == pytest.approx(1e-3)
    assert hparams["optim/head_lr_mult"] == pytest.approx(10)
    assert hparams["loss/_target_"] == "splml.methods.large_loss.ll_ct.LargeLossTemporaryCorrection"
    assert hparams["trainer/max_epochs"] == pytest.approx(2)
    assert hparams["paths/output_dir"] == str(tensorboard_run)
    # Lists and nulls become text (TensorBoard takes scalars only); nothing is left out.
    assert hparams["tags"] == "[]" and hparams["ckpt_path"] == "null"
    experiment = next(p.experiment for p in plugin.values() if p.HasField("experiment"))
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"val/mAP_macro", "test/mAP_macro"} <= metrics, "the HParams table shows the run's scores"
    # The columns' placeholder (NaN at step 0) is not a score: the latest value, which the table
    # shows, is the run's own.
    for tag in ("val/mAP_macro", "test/mAP_macro"):
        values = events.Scalars(tag)
        assert values[0].step == 0 and math.isnan(values[0].value), tag
        assert math.isfinite(values[-1].value) and values[-1].step > 0, tag
    # The config is also written next to the CSV log (nested) and the events (the table's flat keys).
    # (10.0: the optim schema types the multiplier as a float.)
    assert "\n  head_lr_mult: 10.0\n" in (tensorboard_run / "csv" / "hparams.yaml").read_text()
    assert "\noptim/head_lr_mult: 10.0\n" in (tensorboard_run / "tensorboard" / "hparams.yaml").read_text()


def test_tensorboard_run_logs_the_learning_rate_of_backbone_and_head(tensorboard_run):
    events = _events(tensorboard_run / "tensorboard")
    backbone = [e.value for e in events.Scalars("lr-Adam/backbone")]
    head = [e.value for e in events.Scalars("lr-Adam/head")]
    assert len(backbone) == len(head) == 6, "one value per training step (2 epochs x 3 batches)"
    assert backbone[0] == pytest.approx(1e-3) and head[0] == pytest.approx(1e-2)
    assert backbone[-1] < backbone[0], "the cosine schedule decays"


def test_tensorboard_only_run_keeps_curves_and_the_label_quality_figure(tensorboard_run):
    # The CSV log stays on, so the report's curves and the label-quality figure have their source.
    curves = read_epoch_metrics(tensorboard_run, ["val/mAP_macro", "diag/extra_positive_precision"])
    assert sorted(curves["val/mAP_macro"]) == [0, 1]
    assert 1 in curves["diag/extra_positive_precision"]
    assert (tensorboard_run / "label_quality.png").read_bytes()[:4] == b"\x89PNG"
    images = _events(tensorboard_run / "tensorboard").Images("label_quality")
    assert images, "the label-quality figure is logged to TensorBoard"
    assert images[-1].width > 100 and images[-1].height > 100


def test_figures_go_to_every_logger_that_shows_images(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from matplotlib.figure import Figure

    from splml.loggers import log_figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    png = tmp_path / "figure.png"
    fig.savefig(png, dpi=50)
    tensorboard = TensorBoardLogger(tmp_path / "tb", name=None, version="")
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path), tensorboard], global_step=7)
    log_figure(trainer, "heatmaps", png)
    tensorboard.experiment.flush()
    (image,) = _events(tmp_path / "tb").Images("heatmaps")
    assert (image.step, image.width, image.height) == (7, 100, 50)


def test_hparams_table_shows_the_scores_of_the_runs_task():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from splml.callbacks.experiment_log import hparams_table_metrics

    def trainer(monitor):  # last.ckpt's callback (no monitor) comes first: the monitored one decides
        return SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(monitor=None), ModelCheckpoint(monitor=monitor)])

    retrieval = SimpleNamespace(summary_metrics=("test/mAP@100", "test/mAP@all"))
    assert hparams_table_metrics(trainer("val/mAP@100"), retrieval) == ("val/mAP@100", "test/mAP@100", "test/mAP@all")
    assert hparams_table_metrics(SimpleNamespace(checkpoint_callbacks=[]), SimpleNamespace()) == (
        "val/mAP_macro",
        "test/mAP_macro",
    )
