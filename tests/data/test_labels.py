"""Single-positive simulation: one positive from the true set, reproducible, dominant = map argmax."""

from __future__ import annotations

import numpy as np
import pytest

from splml.data.datasets.reben import ReBENDataset
from splml.data.labels import DominantSinglePositive, FullLabels, ManualSinglePositive, RandomSinglePositive
from splml.io.reben.format import CLASS_NAMES
from splml.io.reben.metadata import reference_map_to_class_counts

NAMES = ["a", "b", "c", "d"]


def _targets(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, 4)) < 0.5).astype(np.uint8)
    t[t.sum(1) == 0, 0] = 1
    return t


def test_random_single_positive_is_one_true_label_and_reproducible():
    t = _targets()
    ids = [str(i) for i in range(len(t))]
    a = RandomSinglePositive(seed=7).observe(t, ids=ids, class_names=NAMES)
    b = RandomSinglePositive(seed=7).observe(t, ids=ids, class_names=NAMES)
    c = RandomSinglePositive(seed=8).observe(t, ids=ids, class_names=NAMES)
    assert (a.sum(1) == 1).all()
    assert (a[t == 0] == 0).all(), "the observed positive must be one of the true labels"
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_single_positive_covers_every_true_label():
    # Over many images with labels {0, 3}, both must be drawn: the draw is not biased to one index.
    t = np.zeros((400, 4), dtype=np.uint8)
    t[:, [0, 3]] = 1
    obs = RandomSinglePositive(seed=1).observe(t, ids=[str(i) for i in range(400)], class_names=NAMES)
    share = obs[:, 0].mean()
    assert 0.4 < share < 0.6


def test_sample_without_label_is_an_error():
    t = _targets(10)
    t[4] = 0
    with pytest.raises(ValueError, match="row 4"):
        RandomSinglePositive().observe(t, ids=[str(i) for i in range(10)], class_names=NAMES)


def test_full_labels_mark_negatives_known():
    t = _targets(5)
    obs = FullLabels().observe(t, ids=list("abcde"), class_names=NAMES)
    np.testing.assert_array_equal(obs, np.where(t > 0, 1, -1))


def test_dominant_is_argmax_of_map_pixels_within_label_set():
    t = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=np.uint8)
    counts = {
        0: np.array([10, 30, 0, 0]),
        1: np.array([0, 5, 5, 99]),  # class 3 is not a label of row 1: ignored; tie 1 vs 2 -> 1
        2: np.array([3, 0, 0, 2]),
    }
    obs = DominantSinglePositive().observe(t, ids=["x", "y", "z"], class_names=NAMES, class_counts=counts.__getitem__)
    assert obs.argmax(1).tolist() == [1, 1, 0]
    assert (obs.sum(1) == 1).all()


def test_dominant_without_maps_is_refused():
    with pytest.raises(ValueError, match="reference maps"):
        DominantSinglePositive().observe(_targets(3), ids=["a", "b", "c"], class_names=NAMES)


def test_dominant_on_reben_maps_matches_pixel_argmax(tiny_reben):
    ds = ReBENDataset(tiny_reben, "train", bands="rgb")
    ids = [r.patch_id for r in ds.records]
    counts = lambda i: reference_map_to_class_counts(ds.read_reference_map(i))
    obs = DominantSinglePositive().observe(ds.targets, ids=ids, class_names=CLASS_NAMES, class_counts=counts)
    for i in range(len(ds)):
        c = counts(i)
        c[ds.targets[i] == 0] = -1
        assert obs[i].argmax() == int(np.argmax(c))
        assert ds.targets[i, obs[i].argmax()] == 1


def test_manual_labels_accept_names_and_indices(tmp_path):
    f = tmp_path / "manual.csv"
    f.write_text("id,label\nx,b\ny,2\nz,a\n")
    obs = ManualSinglePositive(f).observe(_targets(3), ids=["x", "y", "z"], class_names=NAMES)
    assert obs.argmax(1).tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x,b\ny,nope\nz,a\n", "line 2.*'nope'"),
        ("x,b\ny,9\nz,a\n", "line 2"),
        ("x,b\nw,a\nz,a\n", r"line 2, column 1 \(image id\): image id 'w'"),
        ("x,b\nx,a\nz,a\n", "already labelled"),
        ("x,b\nz,a\n", "1 training sample"),
        ("x,b,c\n", r"line 1: expected 2 fields .*: fields after column 2 \(class\)"),
    ],
)
def test_manual_label_file_errors_name_the_row(tmp_path, content, message):
    f = tmp_path / "manual.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        ManualSinglePositive(f).observe(_targets(3), ids=["x", "y", "z"], class_names=NAMES)


ANNOTATION_HEADER = "image_id,class_name,annotator,timestamp,seconds\n"


def test_manual_labels_read_the_annotation_file_last_row_wins(tmp_path):
    f = tmp_path / "annotations.csv"
    f.write_text(
        ANNOTATION_HEADER
        + "x,b,ann,2024-01-01T00:00:00Z,1.5\ny,,ann,2024-01-01T00:00:02Z,0.5\nz,a,ann,2024-01-01T00:00:03Z,2\n"
        + "x,d,bob,2024-01-01T00:00:04Z,3\ny,c,ann,2024-01-01T00:00:05Z,1\n"
    )
    obs = ManualSinglePositive(f).observe(_targets(3), ids=["x", "y", "z"], class_names=NAMES)
    assert obs.argmax(1).tolist() == [3, 2, 0]
    assert (obs.sum(1) == 1).all()


def test_manual_labels_read_columns_by_name_in_any_order(tmp_path):
    f = tmp_path / "annotations.csv"
    f.write_text("seconds,class_name,note,image_id\n1,c,hello,y\n1,a,,x\n2,b,,z\n")
    obs = ManualSinglePositive(f).observe(_targets(3), ids=["x", "y", "z"], class_names=NAMES)
    assert obs.argmax(1).tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x,b,a,t,1\ny,,a,t,1\nz,a,a,t,1\n", r"1 were skipped by the annotator \(first: \['y'\]\)"),
        (
            "x,b,a,t,1\nz,a,a,t,1\n",
            r"1 training sample\(s\) have no manual label \(first: \['y'\]\).*labels.missing=random",
        ),
        ("x,b,a,t,1\ny,a,a,t,1\ny,,a,t,1\nz,a,a,t,1\n", "1 were skipped"),  # a later skip replaces the answer
        ("x,b,a,t,1\ny,nope,a,t,1\nz,a,a,t,1\n", "line 3, column class_name: class 'nope'"),
        ("x,b,a,t,1\nw,b,a,t,1\n", "line 3, column image_id: image id 'w' is not in the training split"),
        ("x,b,a,t,1\ny,b,a,t\n", "line 3: expected 5 fields .*: column\\(s\\) seconds missing"),
    ],
)
def test_manual_annotation_file_errors_name_the_images(tmp_path, content, message):
    f = tmp_path / "annotations.csv"
    f.write_text(ANNOTATION_HEADER + content)
    with pytest.raises(ValueError, match=message):
        ManualSinglePositive(f).observe(_targets(3), ids=["x", "y", "z"], class_names=NAMES)


def test_manual_missing_random_draws_skipped_and_missing_from_the_true_labels(tmp_path, caplog):
    f = tmp_path / "annotations.csv"
    f.write_text(ANNOTATION_HEADER + "x,b,a,t,1\ny,,a,t,1\n")
    targets = _targets(3)
    ids = ["x", "y", "z"]
    obs = ManualSinglePositive(f, missing="random", seed=5).observe(targets, ids=ids, class_names=NAMES)
    drawn = RandomSinglePositive(seed=5).observe(targets, ids=ids, class_names=NAMES)
    assert obs[0].argmax() == 1
    np.testing.assert_array_equal(obs[1:], drawn[1:])
    assert "1 training sample(s) have no manual label" in caplog.text and "1 were skipped" in caplog.text
    with pytest.raises(ValueError, match="labels.missing"):
        ManualSinglePositive(f, missing="ignore")
