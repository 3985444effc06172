"""The benchmark archive: small files of finished runs copied between a sweep folder and the repository."""

from __future__ import annotations

from splml.utils.archive import sync_runs


def test_sync_copies_the_kept_files_of_runs_with_results_once(tmp_path):
    src, dst = tmp_path / "sweep", tmp_path / "archive"
    done = src / "loss=macl,seed=1"
    (done / "csv").mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "csv" / "metrics.csv").write_text("epoch\n0\n")
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    running = src / "loss=supcon,seed=1"
    running.mkdir()
    (running / "train.log").write_text("still training")
    assert sync_runs(src, dst) == 2
    assert (dst / done.name / "results.json").is_file() and (dst / done.name / "csv" / "metrics.csv").is_file()
    assert not (dst / done.name / "checkpoints").exists() and not (dst / running.name).exists()
    assert sync_runs(src, dst) == 0, "identical files are not copied again"
    (done / "results.json").write_text('{"status": "completed"}')
    assert sync_runs(src, dst) == 1
    assert sync_runs(tmp_path / "missing", dst) == 0
