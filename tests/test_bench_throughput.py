"""experiments/gpu/bench_throughput.py: its cases compose as training configs, its table computes the ratios."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_every_case_composes_at_the_benchmark_sizes(bench, tmp_path, device):
    args = bench.parse_args(["--device", device])
    for case, overrides in bench.CASES.items():
        cfg = bench.compose_case(args, overrides, tmp_path)
        assert cfg.dataset.datamodule.batch_size == args.batch_size, case
        assert cfg.dataset.datamodule.synthetic.n_train == args.batch_size * args.steps, case
        assert cfg.trainer.precision == args.precision and cfg.backbone.name == args.backbone, case
    gpu = bench.compose_case(args, ["loss=an"], tmp_path).dataset.datamodule
    assert (gpu.augment_on_device == "auto") == (device == "gpu"), "trainer=gpu brings the GPU loader settings"
    assert args.clock == {"cpu": "cpu", "gpu": "wall"}[device]


def test_table_ratios(bench):
    args = bench.parse_args(["--device", "cpu", "--rounds", "2"])
    results = {"model": [100.0, 120.0], "an": [90.0, 90.0], "en_scl": [75.0, 75.0], "q2l": [45.0, 45.0]}
    table = bench.markdown(args, results, wall=60.0)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| (")}  # fmt: skip
    assert rows["(a) model alone"][0] == "110.0"
    assert rows["(b) pipeline, `an`"][:2] == ["90.0", "0.82"]
    assert rows["(c) `en_scl`"][2:] == ["1.20", "<= 1.15 x AN"]
    assert rows["(c) `q2l`"][2] == "2.00"
    assert "images per CPU-second" in table and "resnet10t, 32 px" in table
