"""One reader of annotation files: ``labels=manual`` and ``splml.annotate`` read a file the same way."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from splml.data.labels import ManualSinglePositive
from splml.io.label_files import (
    ANNOTATION_COLUMNS,
    AnnotationLog,
    Answer,
    LabelFileError,
    RowKind,
    ShardInfo,
    read_annotation_file,
)

IDS = ["img0", "img1", "img2"]
CLASSES = ["cat", "dog", "owl"]
HEADER = ",".join(ANNOTATION_COLUMNS) + "\n"
LEGACY_HEADER = "image_id,class_name,annotator,timestamp,seconds\n"
TARGETS = np.ones((3, 3), dtype=np.uint8)


def _manual(path, **options):
    return ManualSinglePositive(path, **options).observe(TARGETS, ids=IDS, class_names=CLASSES)


def _annotate(path):
    AnnotationLog(path, IDS, CLASSES).close()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("zebra7,cat,a,t,1,answer,\n", "line 2, column image_id: image id 'zebra7' is not in the training split"),
        ("img0,unicorn,a,t,1,answer,\n", "column class_name: class 'unicorn' is neither a class name nor an index in 0..2"),
        ("img0,7,a,t,1,answer,\n", "line 2, column class_name: class '7' is neither"),
        ("img0,cat,a,t\nimg1,dog,a,t,1,answer,\n", r"line 2: expected 7 fields .*column\(s\) seconds, kind, note missing"),
        ("img0,cat,a,t,soon,answer,\n", "line 2, column seconds: seconds 'soon' is not a number"),
        ("img0,cat,a,t,1,maybe,\n", "line 2, column kind: kind 'maybe' is not one of answer, change"),
        ("img0,cat,a,t,1,skip,\n", "line 2, column class_name: a 'skip' row has no class, got 'cat'"),
        ("img0,,a,t,1,answer,\n", "line 2, column class_name: an 'answer' row needs a class"),
        ("img0,cat,a,t,1,answer,\nimg1,,a,t,0,undo,\n", "line 3, column kind: undo of image 'img1', which has no"),
        (",,a,t,0,shard,shard=1\n", "line 2, column note: not a shard description"),
    ],
)  # fmt: skip
def test_the_annotation_tool_and_labels_manual_give_the_same_error(tmp_path, rows, message):
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + rows)
    with pytest.raises(LabelFileError, match=message) as by_training:
        _manual(path)
    with pytest.raises(LabelFileError, match=message) as by_tool:
        _annotate(path)
    assert str(by_training.value) == str(by_tool.value)
    assert str(path) in str(by_tool.value)
    assert path.read_text() == HEADER + rows, "a refused file is left as it was"


def test_a_byte_order_mark_is_accepted_by_both(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + HEADER + "img0,cat,a,t,1,,\nimg1,dog,a,t,2,,\nimg2,owl,a,t,3,,\n").encode("utf-8"))
    assert _manual(path).argmax(1).tolist() == [0, 1, 2]
    with AnnotationLog(path, IDS, CLASSES) as log:
        assert [a.class_name for a in log.answers] == ["cat", "dog", "owl"]
        log.append(Answer("img0", "owl", "b", "t", 1.0, RowKind.CHANGE))
    assert _manual(path).argmax(1).tolist() == [2, 1, 2], "the appended row is read by labels=manual too"


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_spreadsheets_semicolons_crlf_and_decimal_commas_are_read(tmp_path, delimiter):
    # What a spreadsheet in a locale with decimal commas saves: BOM, semicolons (or tabs), CRLF.
    lines = [LEGACY_HEADER.strip().replace(",", ";"), "img0;cat;a;t;1,5", "img1;owl;a;t;2", '"img2";"dog";a;t;"0,25"']
    path = tmp_path / "saved.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(lines).replace(";", delimiter) + "\r\n").encode("utf-8"))
    found = read_annotation_file(path, ids=IDS, class_names=CLASSES)
    assert [a.seconds for a in found.answers] == [1.5, 2.0, 0.25]
    assert _manual(path).argmax(1).tolist() == [0, 2, 1]
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes("\ufeffid;label\r\nimg0;dog\r\nimg1;2\r\nimg2;cat\r\n".replace(";", delimiter).encode())
    assert _manual(pairs).argmax(1).tolist() == [1, 2, 0]


def test_a_file_in_another_encoding_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "img0,cat,a,t,1,answer,\nimg1,dog,Jos\xe9,t,1,answer,\n").encode("latin-1"))
    for read in (_manual, _annotate):
        with pytest.raises(LabelFileError, match=r"latin1.csv, line 3, character 13: not UTF-8 text.*CSV UTF-8"):
            read(path)


def test_class_indices_and_names_are_read_alike_by_both(tmp_path):
    path = tmp_path / "indices.csv"
    path.write_text(HEADER + "img0,2,a,t,1,answer,\nimg1,dog,a,t,1,answer,\nimg2,0,a,t,1,answer,\n")
    assert _manual(path).argmax(1).tolist() == [2, 1, 0]
    with AnnotationLog(path, IDS, CLASSES) as log:
        assert [a.class_name for a in log.answers] == ["owl", "dog", "cat"]


def test_pair_rows_are_read_by_the_same_reader(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("\ufeffid,label\nimg0,dog\nimg1,2\nimg2,cat\n")
    found = read_annotation_file(path, ids=IDS, class_names=CLASSES)
    assert found.columns is None and found.latest() == {"img0": "dog", "img1": "owl", "img2": "cat"}
    assert _manual(path).argmax(1).tolist() == [1, 2, 0]
    with pytest.raises(LabelFileError, match="is not an annotation file"):
        _annotate(path)  # the tool appends its own columns only to a file of its own layout


def test_a_line_cut_by_a_crash_is_named_with_the_repair(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_text(HEADER + "img0,cat,a,t,1,answer,\nimg1,do")
    with pytest.raises(
        LabelFileError, match="line 3: expected 7 fields.*repaired by starting python -m splml.annotate"
    ):
        _manual(path)
    with AnnotationLog(path, IDS, CLASSES) as log:  # the tool cuts it off and keeps the rest
        assert log.repaired == b"img1,do" and [a.image_id for a in log.answers] == ["img0"]


# -- row types -------------------------------------------------------------------------------------
def test_undo_restores_the_previous_state_and_changes_replace_answers(tmp_path):
    path = tmp_path / "log.csv"
    with AnnotationLog(path, IDS, CLASSES) as log:
        with pytest.raises(ValueError, match="no row left to undo"):
            log.append(Answer("img1", "", "a", "t", 0.0, RowKind.UNDO))
        log.append(Answer("img0", "cat", "a", "t", 1.0))
        log.append(Answer("img0", "dog", "a", "t", 1.0, RowKind.CHANGE))
        log.append(Answer("img1", "owl", "a", "t", 1.0))
        log.append(Answer("img2", "", "a", "t", 1.0, RowKind.NONE))
        log.append(Answer("img0", "", "a", "t", 0.0, RowKind.UNDO, "undid change to dog"))
        log.append(Answer("img2", "", "a", "t", 0.0, RowKind.UNDO))
        log.append(Answer("img2", "cat", "a", "t", 2.0))
    found = read_annotation_file(path, ids=IDS, class_names=CLASSES)
    assert found.latest() == {"img0": "cat", "img1": "owl", "img2": "cat"}
    assert [row.kind for row in found.answers].count(RowKind.UNDO) == 2
    assert _manual(path).argmax(1).tolist() == [0, 2, 0]
    # Every row ever written is still in the file, in order: history is never rewritten.
    assert [line.split(",")[5] for line in path.read_text().splitlines()[1:]] == [
        "answer", "change", "answer", "none", "undo", "undo", "answer"]  # fmt: skip


def test_the_writer_refuses_rows_that_break_the_format(tmp_path):
    with AnnotationLog(tmp_path / "log.csv", IDS, CLASSES) as log:
        for bad, message in [
            (Answer("img0", "emu"), "not in the nomenclature"),
            (Answer("img9", "cat"), "not in the dataset"),
            (Answer("img0", "", kind=RowKind.FLAG, note="two\nlines"), "line break"),
            (Answer("img0", "cat", kind=RowKind.FLAG), "has no class"),
            (Answer("img0", "", kind="later"), "kind 'later'"),
            (Answer("img0", "", kind=RowKind.UNDO), "no row left to undo"),
            (Answer("img0", "", kind=RowKind.SHARD), "about the file"),
        ]:
            with pytest.raises(ValueError, match=message):
                log.append(bad)
        before = (tmp_path / "log.csv").read_bytes()
        with pytest.raises(ValueError):  # one bad row in a batch: none of them is written
            log.extend([Answer("img0", "cat"), Answer("img1", "emu")])
        assert (tmp_path / "log.csv").read_bytes() == before


def test_labels_manual_reports_each_kind_of_image_without_a_class(tmp_path, caplog):
    path = tmp_path / "log.csv"
    path.write_text(HEADER + 'img0,,a,t,1,none,\nimg1,,a,t,1,flag,"clouds, half the patch"\n')
    with pytest.raises(ValueError) as error:
        _manual(path)
    text = str(error.value)
    assert "1 training sample(s) have no manual label (first: ['img2'])" in text
    assert "1 were marked 'none of these' by the annotator (first: ['img0'])" in text
    assert "1 were flagged by the annotator (first: img1 (clouds, half the patch))" in text
    with caplog.at_level(logging.WARNING):
        observed = _manual(path, missing="random", seed=3)
    assert (observed.sum(1) == 1).all()
    assert "'none of these'" in caplog.text and "flagged" in caplog.text


def test_shard_metadata_is_read_and_a_shard_file_names_the_merge(tmp_path):
    shard = ShardInfo(1, 2, 0.25, 0, 2, 3, "abc")
    assert ShardInfo.parse(shard.note()) == shard
    path = tmp_path / "shard.csv"
    with AnnotationLog(path, IDS, CLASSES) as log:
        log.append(Answer("", "", "a", "t", 0.0, RowKind.SHARD, shard.note()))
        log.append(Answer("img0", "cat", "a", "t", 1.0))
        log.append(Answer("img2", "dog", "a", "t", 1.0))
    found = read_annotation_file(path, ids=IDS, class_names=CLASSES)
    assert found.shard == shard and found.latest() == {"img0": "cat", "img2": "dog"}
    with pytest.raises(ValueError, match=r"shard 1/2 \(2 of the 3 images\).*python -m splml.annotate.merge"):
        _manual(path)


def test_a_five_column_file_is_given_the_new_columns_atomically(tmp_path):
    path = tmp_path / "old.csv"
    old = LEGACY_HEADER + "img0,cat,a,2024-01-01T00:00:00Z,1.50\nimg1,,a,2024-01-01T00:00:01Z,0.50\n"
    path.write_text(old)
    assert _manual(path, missing="random").shape == (3, 3)  # still read as it is
    with AnnotationLog(path, IDS, CLASSES) as log:
        assert log.upgraded
        assert [(a.kind, a.class_name) for a in log.answers] == [("answer", "cat"), ("skip", "")]
        log.append(Answer("img1", "", "a", "t", 0.0, RowKind.UNDO))
        log.append(Answer("img1", "owl", "a", "t", 1.0))
    lines = path.read_text().splitlines()
    assert lines[:3] == [HEADER.strip(), "img0,cat,a,2024-01-01T00:00:00Z,1.50,answer,",
                         "img1,,a,2024-01-01T00:00:01Z,0.50,skip,"]  # fmt: skip
    assert not list(tmp_path.glob("*.upgrading"))
    with AnnotationLog(path, IDS, CLASSES) as log:  # reopened: nothing more to do
        assert not log.upgraded and len(log.answers) == 4
    assert read_annotation_file(path, ids=IDS, class_names=CLASSES).latest() == {"img0": "cat", "img1": "owl"}
