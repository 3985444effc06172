"""The Query2Label head: architecture, its maps, its configs, and training with every loss."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from splml.builders import build_datamodule, build_module, config_dir, register_resolvers
from splml.methods.registry import loss_names
from splml.models.q2l import Query2LabelHead, sine_positional_encoding

from .helpers import compose_train
from .image_support import write_image


def _head(**kwargs) -> Query2LabelHead:
    torch.manual_seed(0)
    sizes = {"hidden_dim": 32, "feedforward_dim": 64, "heads": 4, **kwargs}
    return Query2LabelHead(in_features=24, num_classes=5, **sizes)


def test_outputs_and_maps_pool_to_the_logits_exactly():
    head = _head().train()  # dropout on: the maps still come from the attention before dropout
    out = head(torch.randn(3, 24, 4, 5))
    assert out["logits"].shape == (3, 5) and out["maps"].shape == (3, 5, 4, 5)
    log_mean_exp = torch.logsumexp(out["maps"].flatten(2), dim=-1) - math.log(20)
    torch.testing.assert_close(log_mean_exp, out["logits"], atol=1e-5, rtol=0)


def test_maps_follow_the_last_cross_attention():
    head = _head().eval()
    features = torch.randn(2, 24, 3, 3)
    captured = {}
    last = head.decoder[-1].cross_attn
    hook = last.register_forward_hook(lambda m, i, o: captured.update(log_w=o[1]))
    out = head(features)
    hook.remove()
    attention = captured["log_w"].exp().mean(dim=1)  # B x L x N, averaged over heads
    assert torch.allclose(attention.sum(-1), torch.ones(2, 5), atol=1e-5)
    # Positions ranked by attention are ranked alike by the maps (same class, same image).
    expected = out["logits"][..., None] + torch.log(9 * attention)
    torch.testing.assert_close(out["maps"].flatten(2), expected, atol=1e-4, rtol=0)


def test_each_class_has_its_own_classifier_and_query():
    head = _head().eval()
    features = torch.randn(2, 24, 3, 3)
    before = head(features)["logits"]
    assert head.classifier.weight.shape == (5, 32) and head.classifier.bias.shape == (5,)
    with torch.no_grad():
        head.classifier.weight[2] += torch.randn(32)
        head.label_queries.weight[4] += torch.randn(32)
    after = head(features)["logits"]
    changed = (after - before).abs() > 1e-6
    assert changed[:, 2].all() and changed[:, 4].all()
    # Without decoder self-attention the labels are decoded independently of each other.
    assert not changed[:, [0, 1, 3]].any()


def test_decoder_self_attention_couples_the_labels():
    head = _head(decoder_self_attention=True).eval()
    features = torch.randn(2, 24, 3, 3)
    before = head(features)["logits"]
    with torch.no_grad():
        head.label_queries.weight[4] += torch.randn(32)
    assert ((head(features)["logits"] - before).abs() > 1e-6)[:, :4].any()
    assert head.decoder[0].self_attn is not None and _head().decoder[0].self_attn is None


def test_positional_encoding_makes_the_head_see_where_things_are():
    pos = sine_positional_encoding(3, 4, 16)
    assert pos.shape == (12, 16) and torch.unique(pos, dim=0).shape[0] == 12
    head = _head().eval()
    features = torch.randn(1, 24, 3, 4)
    shuffled = features.flatten(2)[..., torch.randperm(12, generator=torch.Generator().manual_seed(3))].view(
        1, 24, 3, 4
    )
    assert not torch.allclose(head(features)["logits"], head(shuffled)["logits"], atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_positional_encoding(2, 2, 30)


def test_sizes_and_projection_errors():
    head = _head(encoder_layers=2, decoder_layers=3)
    assert len(head.encoder) == 2 and len(head.decoder) == 3
    assert head.decoder[0].ff[0].out_features == 64 and head.decoder[0].cross_attn.heads == 4
    same = Query2LabelHead(in_features=32, num_classes=5, hidden_dim=32, input_proj=False, feedforward_dim=64)
    assert isinstance(same.input_proj, torch.nn.Identity)
    with pytest.raises(ValueError, match=r"head.input_proj=false needs head.hidden_dim equal .*\(24\)"):
        Query2LabelHead(in_features=24, num_classes=5, hidden_dim=32, input_proj=False)
    with pytest.raises(ValueError, match="at least one decoder layer"):
        _head(decoder_layers=0)
    with pytest.raises(ValueError, match="not divisible by head.heads"):
        _head(hidden_dim=36, heads=8)


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_head_config_sets_every_size():
    cfg = _compose("head=q2l", "head.hidden_dim=64", "head.feedforward_dim=96", "head.encoder_layers=0",
                   "head.decoder_layers=1", "head.heads=2", "head.dropout=0.3", "head.decoder_self_attention=true")  # fmt: skip
    head = instantiate(cfg.head, in_features=40, num_classes=7)
    assert isinstance(head, Query2LabelHead) and head.hidden_dim == 64 and len(head.encoder) == 0
    layer = head.decoder[0]
    assert len(head.decoder) == 1 and layer.ff[0].out_features == 96 and layer.cross_attn.heads == 2
    assert layer.self_attn is not None and layer.cross_attn.dropout.p == 0.3
    assert head.input_proj.in_channels == 40 and head.label_queries.weight.shape == (7, 64)


def test_q2l_coco_preset_is_the_papers_setting():
    cfg = _compose("experiment=q2l_coco")
    assert (cfg.dataset.name, instantiate(cfg.labels).name, cfg.backbone.name) == ("coco", "full", "resnet101")
    assert cfg.dataset.datamodule.image_size == 448
    loss = instantiate(cfg.loss)
    assert (loss.name, loss.gamma_neg, loss.gamma_pos, loss.clip, loss.detach_focusing_weight) == (
        "asl", 2.0, 0.0, 0.05, True)  # fmt: skip
    assert (cfg.optim.optimizer._target_, cfg.optim.lr, cfg.optim.optimizer.weight_decay) == (
        "torch.optim.AdamW", 1e-4, 1e-2)  # fmt: skip
    assert cfg.optim.scheduler._target_ == "splml.optim.linear_probe_warmup_cosine"
    assert cfg.optim.warmup_epochs == round(0.2 * cfg.trainer.max_epochs)
    head = cfg.head
    assert (head.hidden_dim, head.input_proj, head.encoder_layers, head.decoder_layers, head.heads,
            head.feedforward_dim, head.dropout, head.decoder_self_attention) == (2048, False, 1, 2, 4, 8192, 0.1, False)  # fmt: skip
    # ResNet-101's features are 2048 wide: the paper's head reads them without a projection.
    built = instantiate(head, in_features=2048, num_classes=80).eval()
    assert isinstance(built.input_proj, torch.nn.Identity)
    with torch.no_grad():
        out = built(torch.randn(1, 2048, 2, 2))
    assert out["logits"].shape == (1, 80) and out["maps"].shape == (1, 80, 2, 2)


def test_q2l_coco_preset_trains_with_tiny_overrides(tmp_path):
    from splml.train import train

    root = _write_formatted_coco(tmp_path / "coco")
    cfg = _compose(
        "experiment=q2l_coco", f"dataset.root={root}", f"paths.output_dir={tmp_path / 'run'}",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", "~callbacks.progress_bar", "dataset.datamodule.image_size=32",
        "dataset.datamodule.batch_size=4", "dataset.datamodule.eval_batch_size=8", "dataset.datamodule.num_workers=0",
        "dataset.datamodule.pin_memory=false", "dataset.datamodule.persistent_workers=false", "trainer=cpu",
        "trainer.max_epochs=2", "backbone=resnet10t", "backbone.pretrained=false", "head.hidden_dim=32",
        "head.input_proj=true", "head.feedforward_dim=64", "optim.warmup_epochs=1",
    )  # fmt: skip
    results = train(cfg)
    assert results["status"] == "completed" and results["config"]["head"]["decoder_layers"] == 2
    assert results["config"]["loss"]["gamma_neg"] == 2.0 and 0 <= results["test/mAP_macro"] <= 100


def _write_formatted_coco(root: Path, n_train: int = 20, n_val: int = 8) -> Path:
    """COCO in the SPML literature's formatted files (80 classes), with tiny images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        labels = (rng.random((n, 80)) < 0.05).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, 80, n)] = 1
        names = [f"{split}2014/COCO_{split}2014_{k:012d}.jpg" for k in range(n)]
        for k, name in enumerate(names):
            write_image(root / name, (24, 20), seed=k)
        np.save(root / f"formatted_{split}_images.npy", np.array(names))
        np.save(root / f"formatted_{split}_labels.npy", labels)
    return root


def _one_step(tmp_path, *overrides: str) -> tuple[L.Trainer, torch.nn.Module, dict[str, torch.Tensor]]:
    """One training step (and one validation batch) of the real module, loss and stores."""
    cfg = compose_train(tmp_path, *overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    before = {k: v.detach().clone() for k, v in module.model.head.state_dict().items()}
    callbacks = module.loss.callbacks(num_samples=len(datamodule.datasets["train"]), num_classes=datamodule.num_classes)
    trainer = L.Trainer(
        accelerator="cpu", fast_dev_run=1, logger=False, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, before


@pytest.mark.parametrize("loss", loss_names("classification"))
def test_every_loss_trains_a_step_with_the_q2l_head(tmp_path, loss):
    head = ["head=q2l", "head.hidden_dim=32", "head.feedforward_dim=64"]
    trainer, module, before = _one_step(tmp_path, f"loss={loss}", *head, "dataset.datamodule.image_size=64")
    assert trainer.global_step == 1
    after = module.model.head.state_dict()
    for name in ("label_queries.weight", "classifier.weight", "decoder.1.cross_attn.k_proj.weight"):
        assert not torch.equal(before[name], after[name]), f"{loss}: {name} did not train"


def test_maps_carry_where_each_label_query_looks_beyond_its_logit():
    """A loss on the maps' spatial pattern alone (the logit subtracted) trains the cross-attention
    and nothing that only feeds the logit: the spatial methods shape where the queries look."""
    head = _head().train()
    out = head(torch.randn(2, 24, 3, 3))
    pattern = out["maps"] - out["logits"][..., None, None]
    target = torch.zeros_like(pattern)
    target[:, 1, 0, 0] = 2.0  # class 1 sits in one corner
    (pattern - target).pow(2).mean().backward()
    last = head.decoder[-1]
    assert last.cross_attn.k_proj.weight.grad.abs().sum() > 0
    assert last.cross_attn.v_proj.weight.grad is None or last.cross_attn.v_proj.weight.grad.abs().sum() == 0
    assert head.classifier.weight.grad is None or head.classifier.weight.grad.abs().sum() == 0
