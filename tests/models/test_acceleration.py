"""``model.channels_last`` and ``model.compile``: the same outputs and the same checkpoints as the eager network."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from splml.models.acceleration import compile_options, prepare_network
from splml.models.backbone import create_backbone
from splml.models.model import SpatialLinearHead, SPMLModel


def _network(seed: int = 0) -> SPMLModel:
    torch.manual_seed(seed)
    backbone = create_backbone("resnet10t", in_chans=4)
    return SPMLModel(backbone, SpatialLinearHead(backbone.num_features, 5)).eval()


def test_channels_last_gives_the_same_outputs_and_state_dict():
    eager = _network()
    fast = prepare_network(copy.deepcopy(eager), {"channels_last": True, "compile": False})
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous(), "the weights were not converted"
    images = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        expected, got = eager(images), fast(images)
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["maps"], expected["maps"], rtol=1e-4, atol=1e-5)
    assert list(fast.state_dict()) == list(eager.state_dict())
    # A checkpoint of one loads into the other.
    eager.load_state_dict(fast.state_dict())


def test_channels_last_hook_converts_the_backbone_input():
    seen: list[torch.Tensor] = []
    network = prepare_network(_network(), {"channels_last": True})
    network.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        network(torch.randn(1, 4, 16, 16))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"channel_last": True}, r"model.channel_last is not an option"), ({"compile": "yes"}, r"model.compile must be")],
)
def test_bad_model_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        prepare_network(_network(), options)


def test_compile_options():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}


# torch.compile's default backend (inductor) generates C++ for the CPU: it needs a C++ compiler.
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
def test_compiled_network_gives_the_same_outputs_and_keeps_its_parameter_names():
    eager = _network()
    compiled = prepare_network(copy.deepcopy(eager), {"channels_last": True, "compile": True})
    images = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        expected, got = eager(images), compiled(images)
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=1e-4, atol=1e-5)
    assert compiled._compiled_call_impl is not None, "the network was not compiled"
    # Checkpoints stay those of the eager network: the same keys, loadable both ways.
    assert list(compiled.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(compiled.state_dict())


def test_a_copy_of_a_compiled_network_runs_eagerly_with_its_own_weights():
    """AdaGC's EMA teacher is a deep copy of the network: it must not share the compiled student's call."""
    compiled = prepare_network(_network(), {"compile": True})  # compiles lazily: nothing runs here
    teacher = copy.deepcopy(compiled)
    assert compiled._compiled_call_impl is not None and teacher._compiled_call_impl is None
    with torch.no_grad():
        for weight in teacher.parameters():
            weight.zero_()
    assert any(bool(w.abs().sum()) for w in compiled.parameters()), "the copy shares the student's weights"
