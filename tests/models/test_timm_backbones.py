"""Any timm backbone trains: CNNs through their unpooled output, transformers through their token grid.

One training step each (``debug=fdr``: one batch of training, validation and test) with a tiny
ViT, a ConvNeXt and an EfficientNet, and the spatial methods (SCL's heatmaps, BoostLU, Query2Label's
maps) on the ViT's token grid; the report names the network each run really used.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from splml.models.backbone import TokenGridBackbone, create_backbone, feature_width
from splml.report import group_runs
from splml.train import train

from ..helpers import compose_train

VIT = "vit_tiny_patch16_224"


@pytest.mark.parametrize(
    ("name", "size", "grid", "wrapped"),
    [
        (VIT, 32, 2, True),
        ("deit_tiny_patch16_224", 64, 4, True),
        ("swin_tiny_patch4_window7_224", 64, 2, True),
        ("convnext_atto", 64, 2, False),
        ("efficientnet_b0", 64, 2, False),
        ("mobilenetv3_small_050", 64, 2, False),
        ("resnet10t", 64, 2, False),
    ],
)
def test_every_family_gives_a_spatial_feature_map_of_the_width_it_reports(name, size, grid, wrapped):
    backbone = create_backbone(name, in_chans=5, image_size=size).eval()
    assert isinstance(backbone, TokenGridBackbone) == wrapped
    with torch.no_grad():
        features = backbone(torch.randn(2, 5, size, size))
    assert features.shape == (2, feature_width(backbone), grid, grid)


def test_a_cnn_keeps_the_weight_names_and_outputs_of_the_plain_timm_model():
    """CNNs are not wrapped: checkpoints written before keep loading, and the features are timm's own."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet10t", in_chans=3, image_size=64).eval()
    torch.manual_seed(0)
    plain = timm.create_model("resnet10t", num_classes=0, global_pool="", in_chans=3).eval()
    assert backbone.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x), plain(x))


def test_the_token_grid_is_the_vit_patch_tokens_after_the_final_norm():
    backbone = create_backbone(VIT, in_chans=3, image_size=32).eval()
    vit = backbone.model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]  # B x 4 x D, normalised
        grid = backbone(x)
    assert torch.allclose(grid.flatten(2).transpose(1, 2), tokens, atol=1e-6)


def _one_step(tmp_path, *overrides):
    cfg = compose_train(tmp_path / "run", "debug=fdr", "dataset.datamodule.image_size=32", *overrides,
                        cache_dir=tmp_path.parent / "cache")  # fmt: skip
    results = train(cfg)
    assert results["status"] == "completed" and results["fast_dev_run"] is True
    return tmp_path / "run" / "results.json"


@pytest.mark.parametrize(
    "overrides",
    [
        (f"backbone.name={VIT}", "loss=en_scl", "dataset.datamodule.augment.crop_scale=[0.5,1.0]"),
        (f"backbone.name={VIT}", "head=boostlu", "loss=ll_r"),
        (f"backbone.name={VIT}", "head=q2l"),
        ("backbone.name=convnext_atto",),
        ("backbone.name=efficientnet_b0",),
    ],
    ids=["vit-scl", "vit-boostlu", "vit-q2l", "convnext", "efficientnet"],
)
def test_one_training_step_with_any_backbone_and_the_report_names_it(tmp_path, overrides):
    results_file = _one_step(tmp_path, *overrides)
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("backbone.name="))
    assert json.loads(results_file.read_text())["config"]["backbone"]["name"] == name
    # The backbone option is resnet10t (tests' default): the report's column shows what was trained.
    (group,) = group_runs([results_file]).values()
    assert group.key[3] == name
