"""One reader of annotation files: ``labels=manual`` and ``splml.annotate`` read a file the same way."""

from __future__ import annotations

import numpy as np
import pytest

from splml.data.labels import ManualSinglePositive
from splml.io.label_files import ANNOTATION_COLUMNS, AnnotationLog, Answer, LabelFileError, read_annotation_file

IDS = ["img0", "img1", "img2"]
CLASSES = ["cat", "dog", "owl"]
HEADER = ",".join(ANNOTATION_COLUMNS) + "\n"
TARGETS = np.ones((3, 3), dtype=np.uint8)


def _manual(path):
    return ManualSinglePositive(path).observe(TARGETS, ids=IDS, class_names=CLASSES)


def _annotate(path):
    AnnotationLog(path, IDS, CLASSES).close()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("zebra7,cat,a,t,1\n", "line 2: image id 'zebra7' is not in the training split"),
        ("img0,unicorn,a,t,1\n", "line 2: class 'unicorn' is neither a class name nor an index in 0..2"),
        ("img0,7,a,t,1\n", "line 2: class '7' is neither a class name nor an index in 0..2"),
        ("img0,cat,a,t\nimg1,dog,a,t,1\n", r"line 2: expected 5 fields \(image_id,class_name"),
        ("img0,cat,a,t,soon\n", "line 2: seconds 'soon' is not a number"),
    ],
)
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
    path.write_bytes(("\ufeff" + HEADER + "img0,cat,a,t,1\nimg1,dog,a,t,2\nimg2,owl,a,t,3\n").encode("utf-8"))
    assert _manual(path).argmax(1).tolist() == [0, 1, 2]
    with AnnotationLog(path, IDS, CLASSES) as log:
        assert [a.class_name for a in log.answers] == ["cat", "dog", "owl"]
        log.append(Answer("img0", "owl", "b", "t", 1.0))
    assert _manual(path).argmax(1).tolist() == [2, 1, 2], "the appended row is read by labels=manual too"


def test_class_indices_and_names_are_read_alike_by_both(tmp_path):
    path = tmp_path / "indices.csv"
    path.write_text(HEADER + "img0,2,a,t,1\nimg1,dog,a,t,1\nimg2,0,a,t,1\n")
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
    path.write_text(HEADER + "img0,cat,a,t,1\nimg1,do")
    with pytest.raises(
        LabelFileError, match="line 3: expected 5 fields.*repaired by starting python -m splml.annotate"
    ):
        _manual(path)
    with AnnotationLog(path, IDS, CLASSES) as log:  # the tool cuts it off and keeps the rest
        assert log.repaired == b"img1,do" and [a.image_id for a in log.answers] == ["img0"]
