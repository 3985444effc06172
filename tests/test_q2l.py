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
    # By default the projection exists only where the widths differ (the released code's default).
    assert isinstance(Query2LabelHead(in_features=32, num_classes=5, hidden_dim=32).input_proj, torch.nn.Identity)
    assert isinstance(Query2LabelHead(in_features=24, num_classes=5, hidden_dim=32).input_proj, torch.nn.Conv2d)
    kept = Query2LabelHead(in_features=32, num_classes=5, hidden_dim=32, input_proj=True)
    assert isinstance(kept.input_proj, torch.nn.Conv2d)
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
    for name in ("label_queries.weight", "classifier.weight", "decoder.1.cross_attn.in_proj_weight"):
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
    grad_q, grad_k, grad_v = head.decoder[-1].cross_attn.in_proj_weight.grad.chunk(3)
    assert grad_q.abs().sum() > 0 and grad_k.abs().sum() > 0
    assert grad_v.abs().sum() == 0  # the values weigh nothing in where the query looks
    assert head.label_queries.weight.grad.abs().sum() > 0
    assert head.classifier.weight.grad is None or head.classifier.weight.grad.abs().sum() == 0


# --------------------------------------------------------------------------- the released computation


class _ReferenceQ2L(torch.nn.Module):
    """Query2Label's forward as its released code defines it (SlongLiu/query2labels), from its equations.

    Sequence-first tensors and ``nn.MultiheadAttention`` throughout, parameters named as in the
    reference: ``transformer.encoder.layers.i.{self_attn, linear1, linear2, norm1, norm2}``,
    ``transformer.decoder.layers.i.{self_attn, norm1 (if kept), multihead_attn, norm2, linear1,
    linear2, norm3}``, ``transformer.decoder.norm``, ``input_proj``, ``query_embed``, ``fc.W``
    (1 x L x d) and ``fc.b`` (1 x L). Evaluation mode only (no dropout).
    """

    def __init__(self, in_features, num_classes, d, heads, ff, enc, dec, keep_input_proj, keep_self_attn):
        super().__init__()
        nn = torch.nn

        def encoder_layer():
            return nn.ModuleDict({"self_attn": nn.MultiheadAttention(d, heads), "linear1": nn.Linear(d, ff),
                                  "linear2": nn.Linear(ff, d), "norm1": nn.LayerNorm(d), "norm2": nn.LayerNorm(d)})  # fmt: skip

        def decoder_layer():
            parts = {"multihead_attn": nn.MultiheadAttention(d, heads), "linear1": nn.Linear(d, ff),
                     "linear2": nn.Linear(ff, d), "norm2": nn.LayerNorm(d), "norm3": nn.LayerNorm(d)}  # fmt: skip
            if keep_self_attn:
                parts.update(self_attn=nn.MultiheadAttention(d, heads), norm1=nn.LayerNorm(d))
            return nn.ModuleDict(parts)

        self.transformer = nn.Module()
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(encoder_layer() for _ in range(enc))
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(decoder_layer() for _ in range(dec))
        self.transformer.decoder.norm = nn.LayerNorm(d)
        self.input_proj = nn.Conv2d(in_features, d, 1) if keep_input_proj else nn.Identity()
        self.query_embed = nn.Embedding(num_classes, d)
        self.fc = nn.Module()
        self.fc.W = nn.Parameter(torch.empty(1, num_classes, d))
        self.fc.b = nn.Parameter(torch.empty(1, num_classes))
        self.d = d

    def position_encoding(self, h, w):
        """DETR's normalised sine encoding on an all-ones mask: 1 x d x h x w."""
        ones = torch.ones(1, h, w)
        y, x = ones.cumsum(1), ones.cumsum(2)
        y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
        x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
        feats = self.d // 2
        dim_t = 10000 ** (2 * torch.div(torch.arange(feats, dtype=torch.float32), 2, rounding_mode="floor") / feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)

    def forward(self, features):
        src = self.input_proj(features)
        bs, _, h, w = src.shape
        pos = self.position_encoding(h, w).repeat(bs, 1, 1, 1).flatten(2).permute(2, 0, 1)  # HW x B x d
        memory = src.flatten(2).permute(2, 0, 1)
        for layer in self.transformer.encoder.layers:  # post-norm: q = k = src + pos, v = src
            q = memory + pos
            memory = layer["norm1"](memory + layer["self_attn"](q, q, value=memory)[0])
            memory = layer["norm2"](memory + layer["linear2"](torch.relu(layer["linear1"](memory))))
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)  # L x B x d
        tgt = torch.zeros_like(query_pos)
        for layer in self.transformer.decoder.layers:
            if "self_attn" in layer:
                q = tgt + query_pos
                tgt = layer["norm1"](tgt + layer["self_attn"](q, q, value=tgt)[0])
            attended = layer["multihead_attn"](query=tgt + query_pos, key=memory + pos, value=memory)[0]
            tgt = layer["norm2"](tgt + attended)
            tgt = layer["norm3"](tgt + layer["linear2"](torch.relu(layer["linear1"](tgt))))
        hs = self.transformer.decoder.norm(tgt).transpose(0, 1)  # B x L x d
        return (self.fc.W * hs).sum(-1) + self.fc.b


def _reference_state(ours: dict) -> dict:
    """Our head's parameters under the reference's names."""
    renames = {"ff.0.": "linear1.", "ff.3.": "linear2.", "attn.": "self_attn.", "cross_attn.": "multihead_attn.",
               "norm_self.": "norm1.", "norm_cross.": "norm2.", "norm_ff.": "norm3."}  # fmt: skip
    out = {}
    for name, value in ours.items():
        if name == "classifier.weight":
            out["fc.W"] = value[None]
        elif name == "classifier.bias":
            out["fc.b"] = value[None]
        elif name == "label_queries.weight":
            out["query_embed.weight"] = value
        elif name.startswith("decoder_norm."):
            out["transformer.decoder.norm." + name.split(".", 1)[1]] = value
        elif name.startswith(("encoder.", "decoder.")):
            part, index, rest = name.split(".", 2)
            for ours_name, theirs in renames.items():
                if rest.startswith(ours_name):
                    rest = theirs + rest[len(ours_name) :]
                    break
            out[f"transformer.{part}.layers.{index}.{rest}"] = value
        else:
            out[name] = value  # input_proj.*
    return out


@pytest.mark.parametrize(
    ("in_features", "input_proj", "self_attention"),
    [(24, True, False), (32, False, False), (32, None, False), (24, None, True)],
    ids=["projected", "no-projection", "auto-no-projection", "projected-self-attention"],
)
def test_logits_equal_the_released_forward_with_the_same_weights(in_features, input_proj, self_attention):
    head = Query2LabelHead(in_features=in_features, num_classes=6, hidden_dim=32, input_proj=input_proj,
                           encoder_layers=1, decoder_layers=2, heads=4, feedforward_dim=48,
                           decoder_self_attention=self_attention).eval()  # fmt: skip
    reference = _ReferenceQ2L(in_features, 6, 32, 4, 48, 1, 2, keep_input_proj=in_features != 32 or input_proj,
                              keep_self_attn=self_attention).eval()  # fmt: skip
    missing, unexpected = reference.load_state_dict(_reference_state(head.state_dict()), strict=True)
    assert not missing and not unexpected
    features = torch.randn(3, in_features, 5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = head(features)["logits"], reference(features)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert theirs.std() > 0.1  # the comparison is not between constants


def test_the_positional_encoding_is_the_released_one():
    reference = _ReferenceQ2L(8, 2, 16, 4, 8, 0, 1, keep_input_proj=False, keep_self_attn=False)
    expected = reference.position_encoding(3, 5)[0].flatten(1).T  # (h * w) x d, row-major positions
    torch.testing.assert_close(sine_positional_encoding(3, 5, 16), expected, atol=1e-6, rtol=0)
    # Row j (1-based) at j / H * 2 pi, sine and cosine of one frequency on adjacent channels.
    pos = sine_positional_encoding(4, 2, 8)
    assert pos[0, 0] == pytest.approx(math.sin(2 * math.pi / 4), abs=1e-5)
    assert pos[0, 1] == pytest.approx(math.cos(2 * math.pi / 4), abs=1e-5)
    assert pos[1, 4] == pytest.approx(math.sin(2 * 2 * math.pi / 2), abs=1e-5)  # column 2 of 2


def test_initialisation_is_the_released_one():
    head = Query2LabelHead(
        in_features=24, num_classes=5, hidden_dim=64, feedforward_dim=96, decoder_self_attention=True
    )
    layer = head.decoder[0]
    for attention in (layer.self_attn, layer.cross_attn, head.encoder[0].attn):
        assert torch.equal(attention.in_proj_bias, torch.zeros_like(attention.in_proj_bias))
        assert torch.equal(attention.out_proj.bias, torch.zeros_like(attention.out_proj.bias))
    # Xavier-uniform bound of the stacked 3d x d projection, and of a d x d output projection.
    assert layer.cross_attn.in_proj_weight.abs().max() <= math.sqrt(6 / (64 + 3 * 64))
    assert layer.cross_attn.in_proj_weight.abs().max() > 0.9 * math.sqrt(6 / (64 + 3 * 64))
    assert layer.cross_attn.out_proj.weight.abs().max() <= math.sqrt(6 / (2 * 64))
    assert float(head.label_queries.weight.std()) == pytest.approx(1.0, abs=0.15)  # nn.Embedding: N(0, 1)
