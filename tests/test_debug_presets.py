"""``debug=fdr``: Lightning's fast_dev_run end to end, with the run's own model and data.

(``debug=fast``'s size and the patches it generates are checked on an installed copy, tests/test_install.py.)
"""

from __future__ import annotations

import json

from splml.train import train

from .helpers import compose_train


def test_fast_dev_run_trains_validates_and_tests_one_batch_and_says_so(tmp_path):
    cfg = compose_train(tmp_path / "run", "debug=fdr", "loss=en", cache_dir=tmp_path / "cache")
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["fast_dev_run"] is True
    assert results["best_checkpoint"] is None and results["best_epoch"] is None
    assert 0 <= results["test/mAP_macro"] <= 100 and results["provenance"]["trainer"]["fast_dev_run"] is True
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # Lightning saves none in a fast_dev_run
    # Only the 16 patches per split it reads were generated.
    (dataset,) = (tmp_path / "cache" / "synthetic").glob("reben-synthetic-*")
    assert dataset.name.endswith("-first-16-16-16")
