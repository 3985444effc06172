"""Optimiser and schedule as Hydra _partial_ nodes (conf/optim/, splml.optim, builders.optim_factory)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from splml.builders import optim_arguments, optim_factory
from splml.models.model import SPMLModel
from splml.module import SPMLModule
from splml.optim import RunLength, build_scheduler, linear_probe_warmup_cosine, named_parameter_groups
from tests.test_configs import compose_cli


def _module(tmp_path, *overrides: str) -> SPMLModule:
    """A tiny classification module built with the optim arguments of the composed config."""
    from hydra.utils import instantiate

    cfg = compose_cli(tmp_path, *overrides)
    model = SPMLModel(nn.Linear(4, 3), nn.Linear(3, 2))
    return SPMLModule(model, instantiate(cfg.loss), num_classes=2, **optim_arguments(cfg))


def _configure(module: SPMLModule, total_steps: int = 20, max_epochs: int = 4):
    """configure_optimizers with a stand-in trainer that knows the run length."""
    module._trainer = SimpleNamespace(estimated_stepping_batches=total_steps, max_epochs=max_epochs)  # type: ignore[assignment]
    try:
        return module.configure_optimizers()
    finally:
        module._trainer = None


def _rates(scheduler, optimizer, steps: int) -> list[tuple[float, ...]]:
    out = []
    for _ in range(steps):
        out.append(tuple(group["lr"] for group in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    return out


def test_linear_probe_then_warmup_then_cosine_rates() -> None:
    lr, mult, probe_lr = 1e-3, 10.0, 1e-2
    weights = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(named_parameter_groups(weights[:1], weights[1:], lr, mult))
    config = linear_probe_warmup_cosine(
        optimizer, run_length=RunLength(total_steps=40, steps_per_epoch=10), lr=lr, warmup_epochs=1,
        linear_probe_epochs=1, linear_probe_lr=probe_lr,
    )  # fmt: skip
    assert config["interval"] == "step"
    rates = _rates(config["scheduler"], optimizer, 40)
    for step in range(10):  # probe: backbone still, head at the probe rate (times its multiplier)
        assert rates[step] == pytest.approx((0.0, mult * probe_lr))
    for step in range(10, 20):  # linear warm-up of both groups to their rates
        factor = (step - 10 + 1) / 10
        assert rates[step] == pytest.approx((lr * factor, lr * mult * factor))
    for step in range(20, 40):  # half cosine over the remaining 20 steps
        factor = 0.5 * (1 + math.cos(math.pi * (step - 20) / 20))
        assert rates[step] == pytest.approx((lr * factor, lr * mult * factor))


def test_schedule_without_probe_or_warmup_is_a_cosine_from_the_first_step() -> None:
    weights = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam(named_parameter_groups(weights[:1], weights[1:], 0.1, 1.0))
    config = linear_probe_warmup_cosine(optimizer, run_length=RunLength(8, 2), lr=0.1)
    rates = _rates(config["scheduler"], optimizer, 8)
    assert rates[0] == (0.1, 0.1)
    assert rates[4][0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_default_config_builds_adam_on_named_groups_with_the_step_schedule(tmp_path) -> None:
    module = _module(tmp_path, "optim.head_lr_mult=10", "optim.weight_decay=0.01")
    configured = _configure(module)
    optimizer = configured["optimizer"]
    assert type(optimizer) is torch.optim.Adam
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head"]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3 * 10]
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    assert configured["lr_scheduler"]["interval"] == "step"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim/optimizer=adamw"], torch.optim.AdamW),
        (["optim/optimizer=sgd"], torch.optim.SGD),
        (["optim.optimizer=sgd"], torch.optim.SGD),  # the plain name of configs before the optim/ groups
        (["optim.optimizer._target_=torch.optim.RMSprop"], torch.optim.RMSprop),
        (["optim/optimizer=timm", "optim.optimizer.opt=lion"], None),
        (["optim/optimizer=timm", "optim.optimizer._target_=timm.optim.Lamb", "~optim.optimizer.opt"], None),
    ],
)
def test_any_torch_or_timm_optimizer(tmp_path, overrides: list[str], expected: type | None) -> None:
    import timm.optim

    module = _module(tmp_path, *overrides)
    optimizer = _configure(module)["optimizer"]
    if expected is None:
        name = "Lion" if "optim.optimizer.opt=lion" in overrides else "Lamb"
        expected = getattr(timm.optim, name)
    assert type(optimizer) is expected
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head"]
    sum(p.square().sum() for p in module.model.parameters()).backward()
    optimizer.step()  # the optimiser accepts the named groups


def test_torch_scheduler_gets_only_the_optimizer(tmp_path) -> None:
    step = "{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:2}"
    module = _module(tmp_path, "optim/scheduler=none", f"optim.scheduler={step}")
    scheduler = _configure(module)["lr_scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 2


def test_build_scheduler_passes_the_run_length_only_when_asked() -> None:
    seen = {}

    def wants(optimizer, *, run_length):
        seen["wants"] = run_length

    def plain(optimizer):
        seen["plain"] = optimizer

    build_scheduler(wants, "opt", RunLength(10, 5))
    build_scheduler(plain, "opt", RunLength(10, 5))
    assert seen == {"wants": RunLength(10, 5), "plain": "opt"}
    assert RunLength.of_trainer(103.0, 4) == RunLength(total_steps=103, steps_per_epoch=25)


@pytest.mark.parametrize("overrides", [["optim/scheduler=none"], ["optim.scheduler=none"], ["optim.scheduler=null"]])
def test_no_scheduler_is_a_constant_rate(tmp_path, overrides: list[str]) -> None:
    assert optim_factory(compose_cli(tmp_path, *overrides), "scheduler") is None
    assert isinstance(_configure(_module(tmp_path, *overrides)), torch.optim.Adam)
    with pytest.raises(ValueError, match="optim.linear_probe_epochs needs a scheduler"):
        _configure(_module(tmp_path, *overrides, "optim.linear_probe_epochs=1"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.optimizer=adamx"], r"optim.optimizer='adamx' is not an option of conf/optim/optimizer/ \(adam, "),
        (["optim.scheduler=cosinus"], r"optim.scheduler='cosinus' is not an option"),
        (["optim.optimizer._target_=torch.optim.Adamx"], r"optim.optimizer._target_='torch.optim.Adamx' cannot be"),
        (["optim.optimizer=0.5"], r"optim.optimizer must be a node with a _target_"),
    ],
)
def test_unknown_optimizer_or_scheduler_names_the_key(tmp_path, overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optim_arguments(compose_cli(tmp_path, *overrides))


def test_config_of_an_older_run_still_builds(tmp_path) -> None:
    """Checkpoints keep their run config; those written before conf/optim/ name the options as strings."""
    cfg = compose_cli(tmp_path)
    old = OmegaConf.merge(cfg, {"optim": {"optimizer": "adamw", "scheduler": "none"}})
    assert optim_factory(old, "optimizer").func is torch.optim.AdamW
    assert optim_factory(old, "optimizer").keywords == {"weight_decay": 1e-4}
    assert optim_factory(old, "scheduler") is None


def test_large_loss_table_trains_at_a_constant_rate_with_a_faster_head(tmp_path) -> None:
    cfg = compose_cli(tmp_path, "experiment=table_large_loss")
    assert cfg.optim.scheduler is None and cfg.optim.optimizer._target_ == "torch.optim.Adam"
    assert (cfg.optim.lr, cfg.optim.head_lr_mult) == (1e-5, 10.0)
