"""Backbone factory, spatial head and BoostLU."""

from __future__ import annotations

import pytest
import torch

from splml.models.backbone import create_backbone
from splml.models.model import SpatialLinearHead, SPMLModel


def test_spatial_head_logits_equal_linear_layer_on_pooled_features():
    head = SpatialLinearHead(8, 3)
    features = torch.randn(2, 8, 4, 4)
    out = head(features)
    linear = features.mean(dim=(-2, -1)) @ head.classifier.weight.view(3, 8).T + head.classifier.bias
    torch.testing.assert_close(out["logits"], linear)
    assert out["maps"].shape == (2, 3, 4, 4)


def test_boostlu_multiplies_positive_activations_before_pooling():
    head = SpatialLinearHead(1, 1, bias=False, boost_positive=5.0)
    with torch.no_grad():
        head.classifier.weight.fill_(1.0)
    features = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    out = head(features)
    assert out["logits"].item() == pytest.approx((2 * 5 - 1 + 0.5 * 5 - 3) / 4)
    torch.testing.assert_close(out["maps"], features)
    with pytest.raises(ValueError, match="boost_positive"):
        SpatialLinearHead(1, 1, boost_positive=0.5)


def test_backbone_any_band_count_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("resnet10t", in_chans=3)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = create_backbone("resnet10t", in_chans=12, weights_path=weights)
    # Layers after the stem come unchanged from the file; the stem is adapted to 12 bands.
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    first = next(k for k in model.state_dict() if k.endswith("weight"))
    assert model.state_dict()[first].shape[1] == 12
    out = SPMLModel(model, SpatialLinearHead(model.num_features, 19))(torch.randn(2, 12, 64, 64))
    assert out["logits"].shape == (2, 19)


def test_backbone_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown timm model 'resnet9000'"):
        create_backbone("resnet9000", in_chans=3)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_backbone("resnet10t", in_chans=3, weights_path=tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save(create_backbone("resnet18", in_chans=3).state_dict(), other)
    with pytest.raises(ValueError, match="same architecture|shape mismatch"):
        create_backbone("resnet10t", in_chans=3, weights_path=other)


def test_pretrained_without_file_fails_with_instructions(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:  # what an offline machine gets from the hub, without waiting for it
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="backbone.weights_path=/path/to/weights.safetensors"):
        create_backbone("resnet10t", in_chans=3, pretrained=True)
