"""Every command answers ``--help`` at once: nothing heavy (torch, Lightning, timm) is imported for it.

(The time it takes is measured by ``experiments/cli/bench_help.py``, not asserted here.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "timm")


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("splml.train", "dataset: aid, ben"),
        ("splml.eval", "ckpt_path: ???"),
        ("splml.predict", "on_error: error"),
        ("splml.export", "format: onnx"),
        ("splml.annotate.__main__", "display_size: 600"),
        ("splml.annotate.merge", "Cohen's kappa"),
        ("splml.report", "--metrics"),
    ],
)
def test_help_imports_nothing_heavy(module, expected):
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['{module}', '--help']\n"
        "try:\n"
        f"    runpy.run_module('{module}', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_help_shows_the_config_with_the_overrides_given():
    proc = subprocess.run(
        [sys.executable, "-m", "splml.train", "loss=en", "optim.lr=0.05", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "_target_: splml.methods.expected.en.ExpectedNegativeLoss" in proc.stdout
    assert "lr: 0.05" in proc.stdout
