"""Several annotators: shards of a dataset, their files, the merge and its agreement."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from splml.annotate.__main__ import dataset_overrides, next_steps
from splml.annotate.merge import cohen_kappa, main, merge_files
from splml.annotate.session import AnnotationSession
from splml.annotate.shards import check_shard_file, parse_shard, shard_indices, shard_info
from splml.data.labels import ManualSinglePositive
from splml.io.label_files import AnnotationLog, Answer, LabelFileError, RowKind, read_annotation_file

from .annotate_support import ANIMALS, fake_items, rows

IDS = tuple(f"img{i}" for i in range(40))


def test_shards_are_disjoint_but_for_the_shared_overlap_and_do_not_depend_on_order():
    parts = [set(shard_indices(IDS, i, 3, overlap=0.1, seed=4)) for i in (1, 2, 3)]
    shared = parts[0] & parts[1] & parts[2]
    assert len(shared) == 4  # ceil(0.1 * 40)
    assert set().union(*parts) == set(range(40))
    for a in range(3):
        for b in range(a + 1, 3):
            assert parts[a] & parts[b] == shared
    assert sorted(len(p) - len(shared) for p in parts) in ([12, 12, 12],)
    reordered = IDS[::-1]
    again = {reordered[i] for i in shard_indices(reordered, 2, 3, overlap=0.1, seed=4)}
    assert again == {IDS[i] for i in parts[1]}
    assert shard_indices(IDS, 1, 3, 0.1, seed=5) != sorted(parts[0])  # the seed picks another split
    assert shard_indices(IDS, 1, 1, overlap=0.5) == list(range(40))
    for bad in ("3", "0/2", "3/2", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="overlap"):
        shard_indices(IDS, 1, 2, overlap=1.5)


def _shard_session(tmp_path, index, count=2, overlap=0.25, name="s.csv"):
    items = fake_items(12)
    info, positions = shard_info(items.ids, items.class_names, f"{index}/{count}", overlap, 0)
    part = items.subset(positions, f"shard {info.label}")
    check_shard_file(tmp_path / name, info)  # as python -m splml.annotate does before opening the file
    log = AnnotationLog(tmp_path / name, part.ids, part.class_names)
    return AnnotationSession(part, log, f"annotator{index}", shard=info), info


def test_a_shard_file_records_its_shard_and_refuses_another(tmp_path):
    session, info = _shard_session(tmp_path, 1)
    session.answer(session.items.ids[0], session.display, "cat", 1.0)
    session.log.close()
    first = rows(tmp_path / "s.csv")[1]
    assert first[5:] == ["shard", info.note()] and first[0] == ""
    with pytest.raises(LabelFileError, match=r"was made for shard shard=1/2 .*not for shard shard=2/2"):
        _shard_session(tmp_path, 2)
    session, _ = _shard_session(tmp_path, 1)  # the same shard resumes
    assert session.state()["labelled"] == 1 and session.state()["shard"] == "1/2"
    session.log.close()


def _write_shards(tmp_path, answers_by_shard, count=2, overlap=0.25):
    """Shard files answered with ``answers_by_shard[k](image_id) -> (kind, class)``."""
    paths = []
    for k, choose in enumerate(answers_by_shard, start=1):
        session, _ = _shard_session(tmp_path, k, count, overlap, name=f"shard{k}.csv")
        while session.cursor is not None:
            image_id = session.items.ids[session.cursor]
            kind, class_name = choose(image_id)
            if kind == "answer":
                session.answer(image_id, session.display, class_name, 2.0)
            elif kind == "none":
                session.none_of_these(image_id, session.display, 1.0)
            elif kind == "flag":
                session.flag(image_id, session.display, "blurred", 1.0)
            else:
                session.skip(image_id, session.display, 1.0)
                if session.cursor is not None and session.status(session.cursor) == "skipped":
                    break
        session.log.close()
        paths.append(tmp_path / f"shard{k}.csv")
    return paths


def test_merge_combines_the_shards_and_measures_agreement_on_the_overlap(tmp_path):
    def first(image_id):
        n = int(image_id[3:])
        return ("none", "") if n == 11 else ("answer", ANIMALS[n % 5])

    def second(image_id):
        n = int(image_id[3:])
        if n == 7:
            return "flag", ""
        return "answer", ANIMALS[n % 5] if n % 3 else ANIMALS[(n + 1) % 5]  # disagrees on multiples of 3

    paths = _write_shards(tmp_path, [first, second])
    report = merge_files(paths)
    one, two = (read_annotation_file(p, ids=None, class_names=None).decisions() for p in paths)
    overlap = sorted(set(one) & set(two), key=lambda s: int(s[3:]))
    assert len(overlap) == 3  # ceil(0.25 * 12)
    categories = [[("none" if r.kind == "none" else r.class_name) for r in (one[s], two[s])] for s in overlap
                  if one[s].kind != "flag" and two[s].kind != "flag"]  # fmt: skip
    expected = cohen_kappa_score([a for a, _ in categories], [b for _, b in categories])
    pair = report.pairs[0]
    assert pair.images == len(categories) and pair.kappa == pytest.approx(expected, nan_ok=True)
    disagreeing = [s for s in overlap if one[s].class_name != two[s].class_name and "flag" not in
                   (one[s].kind, two[s].kind)]  # fmt: skip
    assert len(report.disagreements) == len(disagreeing)

    out = tmp_path / "merged.csv"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    merged = read_annotation_file(out, ids=None, class_names=None)
    meta = merged.metadata(RowKind.MERGED)
    assert len(meta) == 1 and f"disagreements={len(disagreeing)}" in meta[0].note
    state = merged.decisions()
    assert set(state) == set(range_ids(12))
    for image_id in disagreeing:
        assert state[image_id].kind == RowKind.SKIP and state[image_id].note.startswith("disagreement: ")
    for image_id, row in state.items():
        if image_id not in overlap:
            assert row == (one.get(image_id) or two.get(image_id))
    # labels=manual reads the merged file; the disagreements are what is left to settle.
    ids = list(range_ids(12))
    with pytest.raises(ValueError, match=rf"{len(disagreeing)} were skipped by the annotator"):
        ManualSinglePositive(out).observe(np.ones((12, 5)), ids=ids, class_names=ANIMALS)
    # The annotation tool on the merged file (no shard) shows them to be settled, and then it trains.
    assert disagreeing
    with AnnotationLog(out, ids, ANIMALS) as log:
        session = AnnotationSession(fake_items(12), log, "referee")
        for image_id in disagreeing:
            current = session.state()["current"]
            assert (current["id"], current["status"]) == (image_id, "skipped")
            session.answer(image_id, session.display, ANIMALS[0], 1.0)
        assert session.state()["current"] is None
    observed = ManualSinglePositive(out).observe(np.ones((12, 5)), ids=ids, class_names=ANIMALS)
    assert all(observed[int(s[3:])].argmax() == 0 for s in disagreeing)
    # An existing file is never overwritten; "first" keeps the first file's answer.
    assert main([*map(str, paths), "--out", str(out)]) == 2
    firsts = merge_files(paths, disagreement="first")
    assert all(r.kind != RowKind.SKIP for r in firsts.rows if r.image_id in disagreeing)


def range_ids(n):
    return (f"img{i}" for i in range(n))


def test_merge_refuses_shards_of_different_splits_and_reports_a_missing_shard(tmp_path, capsys):
    always_cat = [lambda image_id: ("answer", "cat")] * 2
    paths = _write_shards(tmp_path, always_cat, count=3)
    out = tmp_path / "two_of_three.csv"
    assert main([str(paths[0]), str(paths[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shard(s) 3/3 are not among the files" in printed
    assert "Cohen's kappa undefined" in printed  # everyone said cat: no chance-corrected agreement
    other = tmp_path / "other"
    other.mkdir()
    (odd,) = _write_shards(other, always_cat[:1], count=2)
    assert main([str(paths[0]), str(odd), "--out", str(tmp_path / "x.csv")]) == 2
    assert "do not split the same dataset the same way" in capsys.readouterr().err
    assert main([str(paths[0]), str(paths[0]), "--out", str(tmp_path / "y.csv")]) == 2


def test_cohen_kappa_is_sklearns_on_fixed_inputs():
    a = ["cat", "dog", "cat", "owl", "owl", "dog", "cat", "\0none of these"]
    b = ["cat", "dog", "owl", "owl", "owl", "cat", "cat", "\0none of these"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert np.isnan(cohen_kappa(["cat", "cat"], ["cat", "cat"]))


def test_the_merge_command_runs_as_a_module(tmp_path):
    paths = _write_shards(tmp_path, [lambda image_id: ("answer", "dog")] * 2)
    out = tmp_path / "merged.csv"
    done = subprocess.run([sys.executable, "-m", "splml.annotate.merge", *map(str, paths), "--out", str(out)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "merged 2 file(s)" in done.stdout and f"labels.file={out}" in done.stdout
    assert sum(1 for r in rows(out)[1:] if r[5] == "answer") == 12
    helped = subprocess.run([sys.executable, "-m", "splml.annotate.merge", "--help"], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert "Cohen's kappa" in helped.stdout


def test_the_training_command_repeats_every_dataset_option():
    overrides = ["dataset=ben", "dataset.root=/data/reBEN dir", "dataset.datamodule.max_samples.train=100",
                 "+dataset.datamodule.extra=1", "paths.cache_dir=/cache", "out=labels/ben.csv", "port=0",
                 "annotator=maria", "shard=1/2"]  # fmt: skip
    assert dataset_overrides(overrides) == overrides[:5]
    (train,) = next_steps(overrides, "labels/ben.csv")
    assert train == ("python -m splml.train dataset=ben 'dataset.root=/data/reBEN dir' "
                     "dataset.datamodule.max_samples.train=100 +dataset.datamodule.extra=1 paths.cache_dir=/cache "
                     "labels=manual labels.file=labels/ben.csv")  # fmt: skip
    assert next_steps([], "a.csv") == ["python -m splml.train dataset=synthetic labels=manual labels.file=a.csv"]
    session_shard = shard_info(IDS, ANIMALS, "1/2", 0.1, 0)[0]
    merge, train = next_steps(["dataset=aid"], "labels/aid_1.csv", session_shard)
    assert merge.startswith("python -m splml.annotate.merge labels/aid_1.csv <the other 1 shard file(s)> --out "
                            "labels/aid_1_merged.csv")  # fmt: skip
    assert train.endswith("labels=manual labels.file=labels/aid_1_merged.csv")


def test_help_prints_the_training_command_of_the_options_given():
    done = subprocess.run(
        [sys.executable, "-m", "splml.annotate", "dataset=aid", "dataset.root=/data/AID", "out=labels/aid.csv",
         "--help"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "python -m splml.train dataset=aid dataset.root=/data/AID labels=manual labels.file=labels/aid.csv" in (
        done.stdout
    )


def test_undone_rows_of_a_shard_are_merged_as_their_state(tmp_path):
    session, _ = _shard_session(tmp_path, 1, count=1, overlap=0.0, name="all.csv")
    first = session.items.ids[0]
    session.answer(first, session.display, "cat", 1.0)
    session.undo(session.items.ids[1], session.display)
    session.answer(first, session.display, "owl" if "owl" in ANIMALS else "dog", 1.0)
    session.log.close()
    report = merge_files([tmp_path / "all.csv"])
    assert [(r.image_id, r.class_name, r.kind) for r in report.rows] == [(first, "dog", "answer")]
    assert Answer  # the row type the merge writes


def test_the_command_line_serves_a_shard_and_refuses_its_file_for_another(tmp_path, tiny_reben):
    from hydra import compose, initialize_config_dir

    from splml.annotate.__main__ import open_server
    from splml.builders import config_dir

    out = tmp_path / "ben_1.csv"

    def config(shard):
        overrides = ["dataset=ben", f"dataset.root={tiny_reben}", f"out={out}", "port=0", f"shard={shard}"]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("annotate", overrides=overrides), overrides

    cfg, overrides = config("1/2")
    server = open_server(cfg, overrides)
    try:
        session = server.session
        assert session.shard.label == "1/2" and len(session.items) == session.shard.images == 27  # 5 shared + 22 of 43
        assert session.next_steps[0].startswith(f"python -m splml.annotate.merge {out} <the other 1 shard file(s)>")
        assert f"dataset.root={tiny_reben}" in session.next_steps[1]
        state = session.state()
        assert state["shard"] == "1/2" and state["total"] == 27
    finally:
        server.server_close()
        server.session.log.close()
    with pytest.raises(LabelFileError, match="was made for shard shard=1/2"):
        open_server(*config("2/2"))
