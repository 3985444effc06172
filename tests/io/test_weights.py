"""One state-dict reader and one diff, used by backbone loading (through timm) and splml.eval's fit check."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from splml.io.weights import WeightsFileError, diff_state_dicts, read_state_dict
from splml.models.backbone import create_backbone


def _source(name: str = "resnet10t") -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model = timm.create_model(name, pretrained=False, num_classes=1000)  # a classifier, as published weights have
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _expected_as_before(state: dict[str, torch.Tensor], name: str, in_chans: int) -> dict[str, torch.Tensor]:
    """What the hand-written loader did: adapt the stem with adapt_input_conv, keep the backbone's keys."""
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    state = dict(state)
    key = f"{model.pretrained_cfg['first_conv']}.weight"
    if state[key].shape[1] != in_chans:
        state[key] = adapt_input_conv(in_chans, state[key])
    return {k: v for k, v in state.items() if k in model.state_dict()}


@pytest.mark.parametrize("in_chans", [3, 1, 4, 12])
@pytest.mark.parametrize("fmt", ["safetensors", "pth_nested", "bin_ddp"])
def test_timm_loads_the_same_tensors_as_the_former_loader(tmp_path, in_chans, fmt):
    state = _source()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "pth_nested":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "epoch": 90}, path)
    else:  # a DDP checkpoint: every key prefixed with module.
        path = tmp_path / "w.bin"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = create_backbone("resnet10t", in_chans=in_chans, weights_path=path)
    loaded = model.state_dict()
    expected = _expected_as_before(state, "resnet10t", in_chans)
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_checking_the_file_draws_no_random_number(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_source(), str(path))
    torch.manual_seed(3)
    create_backbone("resnet10t", in_chans=12, weights_path=path)
    after_weights = torch.rand(4)
    torch.manual_seed(3)
    timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="", in_chans=12)
    assert torch.equal(after_weights, torch.rand(4))


def test_the_reader_picks_the_nested_state_dict_and_refuses_anything_else(tmp_path):
    w = torch.ones(2)
    path = tmp_path / "ema.pth"
    torch.save({"model": {"w": w}, "model_ema": {"w": 2 * w}}, path)
    assert torch.equal(read_state_dict(path)["w"], 2 * w)  # EMA weights first, as timm loads them
    torch.save({"optimizer": {"lr": 0.1}}, path)
    with pytest.raises(WeightsFileError, match=r"ema\.pth: expected a state dict"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_the_diff_names_missing_unexpected_and_reshaped_keys():
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    found = {"a": torch.zeros(2, 4), "c": torch.zeros(1), "d": torch.zeros(1)}
    diff = diff_state_dicts(expected, found)
    assert (diff.missing, diff.unexpected, diff.reshaped, diff.fits) == (["b"], ["d"], ["a"], False)
    assert diff_state_dicts(expected, expected).fits


def test_weights_of_another_architecture_are_named_before_timm_loads_them(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(_source("resnet18"), str(path))
    with pytest.raises(ValueError, match=r"resnet18\.safetensors: .*missing from the weights file"):
        create_backbone("resnet10t", in_chans=3, weights_path=path)
    wide = {k: v for k, v in _source().items()}
    wide["layer1.0.conv1.weight"] = torch.zeros(128, 64, 3, 3)
    save_file(wide, str(path))
    with pytest.raises(ValueError, match=r"shape mismatch for \['layer1.0.conv1.weight'\].*file \(128, 64, 3, 3\)"):
        create_backbone("resnet10t", in_chans=3, weights_path=path)
