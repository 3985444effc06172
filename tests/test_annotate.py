"""The annotation tool: its file, its queue and its HTTP API, on a real server on a free port."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splml.annotate.items import View, items_from_datamodule, percentile_stretch
from splml.annotate.session import AnnotationSession, candidate_batches, candidate_order
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.labels import FullLabels, ManualSinglePositive
from splml.io.label_files import ANNOTATION_COLUMNS, AnnotationFileBusy, AnnotationLog, Answer, LabelFileError
from splml.io.label_files import annotation_log as store
from splml.io.reben.format import CLASS_NAMES

from .annotate_support import ANIMALS, Page, fake_items, rows, serving

REPO = Path(__file__).resolve().parents[1]
HEADER = list(ANNOTATION_COLUMNS)


@pytest.fixture(scope="module")
def reben_items(tiny_reben):
    return items_from_datamodule(ReBENDataModule(root=tiny_reben, labels=FullLabels()))


# -- answering, batches, back, skip -------------------------------------------------------------
def test_answer_is_on_disk_when_the_server_confirms_and_the_page_moves_on(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    out = tmp_path / "labels" / "manual.csv"  # the folder is created
    with serving(fake_items(), out, annotator="ana") as page:
        state = page.state()
        assert state["current"]["id"] == "img0" and state["labelled"] == 0 and state["total"] == 4
        synced.clear()
        status, state = page.answer("img0", "dog", 2.25)
        assert status == 200, state
        assert synced, "the row must be fsync-ed before the answer is confirmed"
        assert rows(out)[0] == HEADER
        image_id, cls, annotator, timestamp, seconds, kind, note = rows(out)[1]
        assert (image_id, cls, annotator, seconds, kind, note) == ("img0", "dog", "ana", "2.25", "answer", "")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", timestamp)
        assert state["current"]["id"] == "img1"
        assert state["labelled"] == 1 and state["pending"] == 3
        assert {h["name"]: h["count"] for h in state["histogram"]}["dog"] == 1
        assert state["rate_per_minute"] == pytest.approx(60 / 2.25)
        assert state["eta_seconds"] == pytest.approx(3 * 2.25)


def test_candidate_batches_cycle_through_the_nomenclature_in_a_per_image_order():
    order = candidate_order("img0", CLASS_NAMES, seed=0)
    assert sorted(order) == sorted(CLASS_NAMES)
    assert order == candidate_order("img0", CLASS_NAMES, seed=0)  # Back and restarts see the same order
    assert order != candidate_order("img1", CLASS_NAMES, seed=0)
    assert order != candidate_order("img0", CLASS_NAMES, seed=1)
    batches = candidate_batches(order)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert [c for b in batches[:4] for c in b] == order[:16]
    assert batches[4] == [*order[16:], order[0]]  # the last batch is filled from the start
    assert candidate_batches(["a", "b", "c"]) == [["a", "b", "c"]]


def test_state_offers_the_batches_of_the_current_image(tmp_path):
    with serving(fake_items(classes=ANIMALS), tmp_path / "a.csv", order_seed=7) as page:
        current = page.state()["current"]
        assert current["batches"] == candidate_batches(candidate_order("img0", ANIMALS, 7))
        assert {c for b in current["batches"] for c in b} == set(ANIMALS)


def test_back_walks_the_answers_in_the_order_they_were_given(tmp_path):
    # skip 1, answer 2-4, skip 5: Back shows 5, 4, 3, 2, 1 (not dataset order from where one stands).
    out = tmp_path / "a.csv"
    with serving(fake_items(8), out) as page:
        page.answer("img0", "cat")
        page.skip("img1")
        for i in (2, 3, 4):
            page.answer(f"img{i}", "dog")
        page.skip("img5")
        shown = []
        for _ in range(6):
            state = page.back(page.state()["current"]["id"])[1]
            shown.append(state["current"]["id"])
        assert shown == ["img5", "img4", "img3", "img2", "img1", "img0"]
        assert state["trail"] == {"kind": "history", "label": "", "position": 0, "length": 6}
        assert "oldest answer" in page.back("img0")[1]["notice"]
        # Skip ("keep, go on") walks forward again; a changed answer is a new row, then on along the trail.
        assert page.skip("img0")[1]["current"]["id"] == "img1"
        status, state = page.answer("img1", "cow")
        assert (status, state["current"]["id"]) == (200, "img2")
        counts = {h["name"]: h["count"] for h in state["histogram"]}
        assert counts["cow"] == 1 and state["skipped"] == 1
        # Back from the queue now starts at the newest answer: the changed img1.
        state = page.review("img2", "")[1]  # leave the trail: back to the queue
        assert state["current"]["id"] == "img6" and state["trail"] is None
        assert page.back("img6")[1]["current"]["id"] == "img1"
    assert [r[:2] + r[5:6] for r in rows(out)[1:]] == [
        ["img0", "cat", "answer"], ["img1", "", "skip"], ["img2", "dog", "answer"], ["img3", "dog", "answer"],
        ["img4", "dog", "answer"], ["img5", "", "skip"], ["img1", "cow", "answer"]]  # fmt: skip
    observed = ManualSinglePositive(out, missing="random").observe(
        np.ones((8, 5)), ids=[f"img{i}" for i in range(8)], class_names=ANIMALS
    )
    assert [ANIMALS[c] for c in observed[:5].argmax(1)] == ["cat", "cow", "dog", "dog", "dog"]


def test_a_changed_answer_is_a_change_row_and_the_last_row_wins(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        page.answer("img0", "cat")
        page.answer("img1", "dog")
        state = page.back("img2")[1]
        current = state["current"]
        assert (current["id"], current["status"], current["answer"]) == ("img1", "labelled", "dog")
        before = out.read_bytes()
        assert page.answer("img1", "dog")[1]["current"]["id"] == "img2"  # the same class again: nothing written
        assert out.read_bytes() == before
        page.back("img2")
        _status, state = page.answer("img1", "cow")
        assert state["current"]["id"] == "img2"
        counts = {h["name"]: h["count"] for h in state["histogram"]}
        assert counts["cow"] == 1 and counts["dog"] == 0 and state["labelled"] == 2
    assert [r[:2] + r[5:6] for r in rows(out)[1:]] == [["img0", "cat", "answer"], ["img1", "dog", "answer"],
                                                       ["img1", "cow", "change"]]  # fmt: skip
    observed = ManualSinglePositive(out).observe(np.ones((2, 5)), ids=["img0", "img1"], class_names=ANIMALS)
    assert [ANIMALS[c] for c in observed.argmax(1)] == ["cat", "cow"]


def test_undo_writes_an_undo_row_and_shows_the_image_again(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        page.answer("img0", "cat")
        page.answer("img1", "dog")
        page.back("img2")
        page.answer("img1", "cow")  # a change
        assert page.state()["undo"] == "img1: change cow"
        status, state = page.undo("img2")
        assert status == 200 and "Undone: change cow for img1" in state["notice"]
        current = state["current"]
        assert (current["id"], current["status"], current["answer"]) == ("img1", "labelled", "dog")
        assert state["trail"]["kind"] == "undo"
        # Undo again: img1's dog is the newest answer still in force; img1 is then pending again.
        state = page.undo("img1")[1]
        assert (state["current"]["id"], state["current"]["status"]) == ("img1", "pending")
        assert state["labelled"] == 1
        state = page.undo("img1")[1]
        assert (state["current"]["id"], state["current"]["status"], state["labelled"]) == ("img0", "pending", 0)
        assert "no answer to undo" in page.undo("img0")[1]["notice"]
        status, state = page.answer("img0", "bird")
        assert state["current"]["id"] == "img1"  # the end of the undo trail: back to the queue
    kinds = [r[5] for r in rows(out)[1:]]
    assert kinds == ["answer", "answer", "change", "undo", "undo", "undo", "answer"]
    assert rows(out)[4][6].startswith("undid change cow of ")
    with AnnotationLog(out, fake_items().ids, ANIMALS) as reopened:
        assert reopened.answers[-1].class_name == "bird"


def test_go_to_an_image_by_id_or_position_and_review_one_class(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(6), out) as page:
        for i, name in enumerate(["cat", "dog", "cat", "fish", "cat"]):
            page.answer(f"img{i}", name)
        assert page.goto("img5", "img3")[1]["current"]["id"] == "img3"
        assert page.goto("img3", "#2")[1]["current"]["id"] == "img1"
        assert page.goto("img1", 6)[1]["current"]["id"] == "img5"
        for bad in ("img9", "0", "7", "", True, None, "99999999999999999999"):
            status, body = page.goto("img5", bad)
            assert status == 400 and "give an image id or a position 1..6" in body["error"], bad
        page.goto("img5", "img1")
        state = page.answer("img1", "cow")[1]
        assert state["current"]["id"] == "img5" and state["trail"] is None  # back to the queue
        state = page.review("img5", "cat")[1]
        assert state["current"]["id"] == "img0" and state["trail"]["length"] == 3
        assert page.skip("img0")[1]["current"]["id"] == "img2"
        assert page.back("img2")[1]["current"]["id"] == "img0"
        assert page.skip("img0")[1]["current"]["id"] == "img2"
        state = page.answer("img2", "bird")[1]  # corrected during the review
        assert state["current"]["id"] == "img4"
        assert page.skip("img4")[1]["current"]["id"] == "img5"  # the review's end: the queue
        assert "No image has the answer 'dog'" in page.review("img5", "dog")[1]["notice"]  # img1 is a cow now
        assert page.review("img5", "unicorn")[0] == 400
        history = page.state()["history"]
        assert [h["id"] for h in history][:2] == ["img2", "img1"] and history[0]["thumb"] == "/thumb/2.png"


def test_none_of_these_and_flag_are_rows_of_their_own(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        status, state = page.none("img0")
        assert status == 200 and state["none"] == 1 and state["current"]["id"] == "img1"
        assert page.flag("img1", "   ")[0] == 400
        assert page.flag("img1", 7)[0] == 400
        assert page.flag("img1", "x" * 501)[0] == 400
        status, state = page.flag("img1", "half the patch\nis cloud")
        assert status == 200 and state["flagged"] == 1
        assert state["history"][0] == {"index": 1, "id": "img1", "status": "flagged", "class": "", "note":
                                       "half the patch is cloud", "thumb": "/thumb/1.png"}  # fmt: skip
        page.answer("img2", "cat")
        state = page.answer("img3", "cat")[1]
        assert state["current"] is None  # none-of-these and flagged images do not come back by themselves
    assert [r[:2] + r[5:] for r in rows(out)[1:3]] == [["img0", "", "none", ""],
                                                       ["img1", "", "flag", "half the patch is cloud"]]  # fmt: skip


def test_a_display_takes_one_answer_only(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        state = page.state()
        body = {"id": "img0", "display": state["display"], "class": "cat", "seconds": 1}
        assert page.post("/api/answer", body)[0] == 200
        page.back("img1")  # img0 is current again, in a new display
        status, reply = page.post("/api/answer", body)  # the same request again: a held key, a double click
        assert status == 409 and "nothing was saved" in reply["error"]
        assert reply["state"]["current"]["id"] == "img0"
        for bad in (None, 7, "é" * 3, "x" * 100):
            assert page.post("/api/answer", {**body, "display": bad})[0] == 400, bad
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"]]


def test_an_image_that_cannot_be_shown_takes_only_skip_or_flag(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(broken=(0, 2)), out) as page:
        state = page.state()
        assert state["current"]["problem"] is None  # not known before it was drawn
        status, body = page.get(state["current"]["image"])
        assert status == 500
        assert "img0 cannot be shown: /data/images/img0.jpg: cannot identify" in json.loads(body)["error"]
        assert page.state()["current"]["problem"].startswith("img0 cannot be shown")
        for refused in (page.answer("img0", "cat"), page.none("img0")):
            assert refused[0] == 409 and "can only be skipped or flagged" in refused[1]["error"]
        assert page.flag("img0", "corrupt file")[0] == 200
        page.answer("img1", "dog")
        # Refused even when the page never asked for the image: the server draws it first.
        status, body = page.answer("img2", "cat")
        assert status == 409 and "img2 cannot be shown" in body["error"]
        assert page.skip("img2")[0] == 200
    assert [r[:2] + r[5:6] for r in rows(out)[1:]] == [["img0", "", "flag"], ["img1", "dog", "answer"],
                                                       ["img2", "", "skip"]]  # fmt: skip


def test_skip_writes_a_skip_row_and_skipped_images_come_back_at_the_end(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        status, state = page.skip("img0")
        assert status == 200 and state["current"]["id"] == "img1" and state["skipped"] == 1
        page.answer("img1", "cat")
        page.answer("img2", "dog")
        status, state = page.answer("img3", "fish")
        current = state["current"]
        assert (current["id"], current["status"]) == ("img0", "skipped")
        status, state = page.answer("img0", "bird")
        assert state["current"] is None and state["labelled"] == 4 and state["skipped"] == 0
        status, state = page.back(None)  # from the finished screen: the newest answer
        assert state["current"]["id"] == "img0"
        before = out.read_bytes()
        status, state = page.skip("img0")  # keep the answer, go on (the end of the trail: finished)
        assert status == 200 and out.read_bytes() == before, "skip on an answered image must not write"
        assert state["current"] is None
    assert rows(out)[1][:2] + rows(out)[1][5:6] == ["img0", "", "skip"]


# -- resume, crash, failed writes, second writer --------------------------------------------------
def test_restart_resumes_at_the_first_image_without_a_row(tmp_path):
    out = tmp_path / "a.csv"
    items = fake_items(5)
    with serving(items, out) as page:
        first_batches = page.state()["current"]["batches"]
        page.answer("img0", "cat")
        page.skip("img1")
        page.answer("img2", "dog")
    with serving(items, out) as page:
        state = page.state()
        assert state["current"]["id"] == "img3"
        assert (state["labelled"], state["skipped"], state["pending"]) == (2, 1, 2)
        assert [h["id"] for h in state["history"]] == ["img2", "img1", "img0"]  # the history survives too
        page.back("img3")
        page.back("img2")
        state = page.back("img1")[1]
        assert state["current"]["id"] == "img0" and state["current"]["batches"] == first_batches
        page.review("img0", "")  # back to the queue
        page.answer("img3", "cow")
        page.answer("img4", "cow")
    with serving(items, out) as page:  # only the skipped image is left: resume there
        assert page.state()["current"]["id"] == "img1"


def test_half_written_last_line_is_cut_off_and_earlier_rows_kept(tmp_path):
    out = tmp_path / "a.csv"
    whole = ",".join(HEADER) + "\nimg0,cat,a,2024-01-01T00:00:00Z,1.00,answer,\n"
    out.write_bytes(whole.encode() + b"img1,do")  # killed in the middle of writing a row
    with AnnotationLog(out, fake_items().ids, ANIMALS) as annotations:
        assert annotations.repaired == b"img1,do"
        assert [a.image_id for a in annotations.answers] == ["img0"]
        assert out.read_text() == whole
        annotations.append(Answer("img1", "dog", "a", "2024-01-01T00:00:01Z", 2.0))
    assert rows(out)[1:] == [["img0", "cat", "a", "2024-01-01T00:00:00Z", "1.00", "answer", ""],
                             ["img1", "dog", "a", "2024-01-01T00:00:01Z", "2.00", "answer", ""]]  # fmt: skip
    out.write_bytes(b"image_id,class_n")  # even the header can be cut: it is written again
    with AnnotationLog(out, fake_items().ids, ANIMALS) as annotations:
        assert annotations.answers == []
    assert rows(out) == [HEADER]


def test_a_failed_write_leaves_no_partial_row(tmp_path, monkeypatch):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        page.answer("img0", "cat")
        before = out.read_bytes()
        real_write = os.write

        def disk_full(fd, data):
            real_write(fd, data[:7])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store.os, "write", disk_full)
        status, body = page.answer("img1", "dog")
        assert status == 500 and "No space left" in body["error"]
        assert out.read_bytes() == before
        monkeypatch.setattr(store.os, "write", real_write)
        assert page.state()["current"]["id"] == "img1"  # the page stays on the unsaved image
        assert page.answer("img1", "dog")[0] == 200
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"], ["img1", "dog"]]


def test_killing_the_writer_at_any_moment_loses_no_confirmed_row(tmp_path):
    # A writer appends as fast as it can and reports each confirmed row; it is killed with SIGKILL.
    out = tmp_path / "a.csv"
    script = (
        "import sys\n"
        "from splml.io.label_files import AnnotationLog, Answer\n"
        "ids = [f'img{i}' for i in range(100000)]\n"
        f"log = AnnotationLog({str(out)!r}, ids, ['cat', 'dog'])\n"
        "for i, image_id in enumerate(ids):\n"
        "    log.append(Answer(image_id, 'cat' if i % 2 else 'dog', 'w', '2024-01-01T00:00:00Z', 1.0))\n"
        "    print(i, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
    confirmed = -1
    while confirmed < 200:
        confirmed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    confirmed = max([confirmed, *(int(line) for line in proc.stdout.read().split())])
    ids = [f"img{i}" for i in range(100000)]
    with AnnotationLog(out, ids, ["cat", "dog"]) as annotations:
        saved = [a.image_id for a in annotations.answers]
    assert saved[: confirmed + 1] == ids[: confirmed + 1]
    assert len(saved) <= confirmed + 2  # at most the row being written when it was killed


def test_a_second_writer_on_the_same_file_is_refused(tmp_path):
    out = tmp_path / "a.csv"
    items = fake_items()
    with (
        AnnotationLog(out, items.ids, ANIMALS),
        pytest.raises(AnnotationFileBusy, match="open in another splml.annotate"),
    ):
        AnnotationLog(out, items.ids, ANIMALS)
    AnnotationLog(out, items.ids, ANIMALS).close()  # free again once the first is closed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,label\nimg0,cat\n", "not an annotation file"),
        ("id,label\nimg0,cat", "not an annotation file"),  # no final newline: its last line is not cut either
        (
            "image_id,class_name,annotator,timestamp,seconds\nzebra7,cat,a,t,1\n",
            "line 2, column image_id: image id 'zebra7' is not in the training split",
        ),
        ("image_id,class_name,annotator,timestamp,seconds\nimg0,unicorn,a,t,1\n", "line 2, column class_name"),
        ("image_id;class_name;annotator;timestamp;seconds;kind;note\n", "comma-separated"),
        ("image_id,class_name,annotator,timestamp,seconds\nimg0,cat,a,t\n", "line 2: expected 5 fields"),
    ],
)
def test_a_file_that_is_not_this_datasets_annotation_file_is_refused(tmp_path, content, message):
    out = tmp_path / "a.csv"
    out.write_text(content)
    with pytest.raises(LabelFileError, match=message):
        AnnotationLog(out, fake_items().ids, ANIMALS)
    assert out.read_text() == content, "a refused file is left as it was"


# -- two tabs, bad requests, security ---------------------------------------------------------------
def test_an_answer_for_an_image_that_is_no_longer_current_is_refused(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        tab_b = Page(page.port)
        tab_b.state()
        assert page.answer("img0", "cat")[0] == 200
        status, body = tab_b.answer("img0", "dog")  # the second tab still shows img0
        assert status == 409 and "nothing was saved" in body["error"]
        assert body["state"]["current"]["id"] == "img1"
        stale = {"id": "img1", "display": "an old display"}
        assert tab_b.post("/api/skip", {**stale, "seconds": 1})[0] == 409
        assert tab_b.post("/api/back", stale)[0] == 409
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"]]


def test_unknown_class_and_bad_numbers_are_refused_with_a_message(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        status, body = page.answer("img0", "unicorn")
        assert status == 400 and "unknown class 'unicorn'" in body["error"]
        assert page.answer("img0", "cat", -1)[0] == 400
        assert page.answer("img0", "cat", "3")[0] == 400
        assert page.answer("img0", "cat", 10**400)[0] == 400  # a number JSON holds but a float cannot
        assert page.answer(["img0"], "cat")[0] == 400
        assert page.state()["current"]["id"] == "img0"
    assert rows(out) == [HEADER]


@pytest.mark.parametrize(
    "path",
    ["/../pyproject.toml", "/static/", "/static/app.js", "/app.js/..", "/%2e%2e/%2e%2e/etc/passwd", "/image/4.png",
     "/image/-1.png", "/image/../../etc/passwd", "/image/0.png/..", "/image/0", "/map/0.png", "/api/", "/index.html",
     "/annotate/static/app.js", "//etc/passwd", "/thumb/4.png", "/thumb/x.png"],
)  # fmt: skip
def test_nothing_outside_the_page_and_the_datasets_images_is_served(tmp_path, path):
    with serving(fake_items(4), tmp_path / "a.csv") as page:
        status, body = page.get(path)
        assert status == 404, (path, body[:200])
        assert b"root:" not in body and b"[project]" not in body


def test_page_images_and_maps_are_served(tmp_path, reben_items):
    with serving(reben_items, tmp_path / "a.csv") as page:
        for path in ("/", "/app.js", "/style.css"):
            status, headers, _ = page.request("GET", path)
            assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
        state = page.state()
        assert state["has_maps"] and state["total"] == len(reben_items)
        status, png = page.get(state["current"]["image"])
        assert status == 200 and png.startswith(b"\x89PNG")
        status, png = page.get(state["current"]["map"])
        assert status == 200 and png.startswith(b"\x89PNG")
        status, png = page.get("/thumb/0.png")
        assert status == 200 and max(Image.open(io.BytesIO(png)).size) <= 96
        offered = {c["name"] for c in state["views"]["composites"]}
        assert offered == {"true", "nir", "swir", "s1"}
        assert state["views"]["default"] == {"composite": "true", "stretch": "2-98"}
        drawn = set()
        for composite in sorted(offered):
            for stretch in ("off", "2-98", "5-95"):
                status, png = page.get(f"/image/0.png?composite={composite}&stretch={stretch}")
                assert status == 200, png
                drawn.add(png)
        assert len(drawn) == 12, "every composite and stretch draws another picture"
        for query in ("composite=ndvi", "stretch=90-10", "stretch=abc", "stretch=1-2-3", "stretch=nan-5"):
            status, _body = page.get(f"/image/0.png?{query}")
            assert status == 400, query
        legend = state["current"]["map_legend"]
        assert legend and all(re.fullmatch(r"#[0-9a-f]{6}", e["colour"]) for e in legend)
        assert page.get(f"/image/{len(reben_items)}.png")[0] == 404


def test_requests_from_elsewhere_are_refused(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        body = json.dumps({"id": "img0", "display": page.state()["display"], "class": "cat", "seconds": 1}).encode()
        json_type = {"Content-Type": "application/json"}
        assert page.request("POST", "/api/answer", body, {"Content-Type": "text/plain"})[0] == 415
        assert page.request("POST", "/api/answer", b"x" * 5000, json_type)[0] == 413
        assert page.request("POST", "/api/answer", b"{not json", json_type)[0] == 400
        assert page.request("POST", "/api/answer", b"[1]", json_type)[0] == 400
        evil_origin = {**json_type, "Origin": "http://evil.example"}
        assert page.request("POST", "/api/answer", body, evil_origin)[0] == 403
        # DNS rebinding: a page of another site resolved to 127.0.0.1 sends its own Host.
        assert page.request("GET", "/api/state", headers={"Host": f"evil.example:{page.port}"})[0] == 403
        assert page.request("PUT", "/api/answer", body, json_type)[0] == 501
        same_origin = {**json_type, "Origin": f"http://127.0.0.1:{page.port}"}
        assert page.request("POST", "/api/answer", body, same_origin)[0] == 200
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"]]


# -- rendering -------------------------------------------------------------------------------------
def test_percentile_stretch_maps_each_band_between_its_percentiles():
    band = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    flat = np.full((1, 10, 10), 7.0)
    out = percentile_stretch(np.concatenate([band, band * 10, flat]), 2, 98)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 1])  # per band: the scale does not matter
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 100 < out[5, 0, 0] < 150
    assert (out[..., 2] == 0).all()
    with pytest.raises(ValueError, match="percentiles"):
        percentile_stretch(band, 98, 2)


def test_reben_items_are_the_training_split_with_rgb_and_maps(tiny_reben, reben_items):
    dm = ReBENDataModule(root=tiny_reben, labels=FullLabels())
    dm.setup()
    assert reben_items.ids == tuple(r.patch_id for r in dm.datasets["train"].records)
    assert reben_items.class_names == CLASS_NAMES
    image = reben_items.picture(0)
    assert image.mode == "RGB" and image.size == (120, 120)
    swir = np.asarray(reben_items.picture(0, View("swir", (2.0, 98.0))))
    s1 = np.asarray(reben_items.picture(0, View("s1", None)))
    assert swir.shape == s1.shape == (120, 120, 3) and not np.array_equal(swir, np.asarray(image))
    assert s1.min() == 0 and s1.max() == 255  # min-max: every band spans the full range
    classes = reben_items.class_map(0)
    assert classes.shape == (120, 120) and classes.max() < len(CLASS_NAMES)
    truth = set(np.flatnonzero(dm.datasets["train"].targets[0]).tolist())
    assert {c for c in reben_items.map_classes(0) if c >= 0} == truth


def test_an_unreadable_reference_map_leaves_the_answer_and_the_page_working(tmp_path, caplog):
    def class_map(i):
        if i == 1:
            raise KeyError("img1_reference_map")  # as a reBEN LMDB without that image's map
        return np.zeros((2, 2), dtype=np.int16)

    items = replace(fake_items(), class_map=class_map, class_colours=((200, 0, 0),) * len(ANIMALS))
    with AnnotationLog(tmp_path / "a.csv", items.ids, items.class_names) as annotations:
        session = AnnotationSession(items, annotations, "eve")
        state = session.answer("img0", session.display, "cat", 1.0)
        assert state["current"]["id"] == "img1" and state["current"]["map_legend"] == []
        assert "img1" in caplog.text
    assert rows(tmp_path / "a.csv")[1][:2] == ["img0", "cat"]


def test_session_refuses_a_bad_annotator_name(tmp_path):
    items = fake_items()
    with (
        AnnotationLog(tmp_path / "a.csv", items.ids, items.class_names) as annotations,
        pytest.raises(ValueError, match="annotator"),
    ):
        AnnotationSession(items, annotations, "eve\nimg0,cat")


# -- the command line ------------------------------------------------------------------------------
def _start_cli(cwd: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "splml.annotate", *overrides], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def test_command_line_serves_refuses_a_second_server_and_survives_a_kill(tmp_path, tiny_reben, reben_items):
    out = tmp_path / "labels" / "ben_manual.csv"
    args = ["dataset=ben", f"dataset.root={tiny_reben}", f"out={out}", "port=0", "annotator=cli",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    first = _start_cli(tmp_path, *args)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = first.stdout.readline()
            assert line, "splml.annotate stopped:\n" + "".join(lines)
            lines.append(line)
            if (match := re.search(r"Open http://127\.0\.0\.1:(\d+)/", line)) is not None:
                break
        port = int(match.group(1))
        assert "48 images" in "".join(lines)
        printed = "".join(lines)
        assert f"python -m splml.train dataset=ben dataset.root={tiny_reben} labels=manual labels.file={out}" in (
            printed
        ), printed
        page = Page(port)
        state = page.state()
        assert page.answer(state["current"]["id"], state["current"]["batches"][0][0])[0] == 200

        second = subprocess.run(
            [sys.executable, "-m", "splml.annotate", *args], cwd=tmp_path, capture_output=True, text=True,
            timeout=300, env=os.environ.copy(), check=False,
        )  # fmt: skip
        assert second.returncode != 0
        assert "is open in another splml.annotate" in second.stdout + second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with AnnotationLog(out, reben_items.ids, CLASS_NAMES) as annotations:  # the lock died with the process
        assert [a.image_id for a in annotations.answers] == [state["current"]["id"]]


# -- what labels=manual makes of the file ----------------------------------------------------------
def _compose_annotate(*overrides: str):
    from hydra import compose, initialize_config_dir

    from splml.builders import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("annotate", overrides=list(overrides))


def _answer_everything(page: Page, choose) -> dict[str, str]:
    """Answer every image without a row through the API with ``choose(image id, candidate classes)``;
    stops when only skipped images are left."""
    chosen = {}
    state = page.state()
    while state["current"] is not None and state["current"]["status"] == "pending":
        current = state["current"]
        candidates = [c for batch in current["batches"] for c in batch]
        chosen[current["id"]] = choose(current["id"], candidates)
        status, state = page.answer(current["id"], chosen[current["id"]])
        assert status == 200, state
    return chosen


def test_aid_annotation_covers_the_official_training_set_that_labels_manual_reads(tmp_path):
    from splml.annotate.__main__ import build_items
    from splml.data.datamodules.image_folders import AIDDataModule

    from .image_support import write_aid_tree

    root = tmp_path / "aid"
    write_aid_tree(root, n_train=10, n_test=4)
    out = tmp_path / "aid_manual.csv"
    items = build_items(_compose_annotate("dataset=aid", f"dataset.root={root}", f"out={out}"))
    assert len(items) == 10  # the official train set: validation images too
    with serving(items, out) as page:
        status, png = page.get(page.state()["current"]["image"])
        assert status == 200 and png.startswith(b"\x89PNG")
        chosen = _answer_everything(page, lambda sid, candidates: candidates[len(sid) % len(candidates)])
    dm = AIDDataModule(root, image_size=16, labels=ManualSinglePositive(out))
    dm.setup()  # every image of the official train set has its class: no error
    train = dm.datasets["train"]
    assert len(train) + len(dm.datasets["validation"]) == len(chosen) == 10
    for sid, observed in zip(train.ids, train.observed, strict=True):
        assert [dm.class_names[c] for c in np.flatnonzero(observed)] == [chosen[sid]]


def test_a_corrupt_image_file_and_a_link_to_one_are_named_and_take_only_skip_or_flag(tmp_path):
    from splml.annotate.__main__ import build_items

    from .image_support import write_aid_tree

    root = tmp_path / "aid"
    write_aid_tree(root, n_train=6, n_test=2)
    corrupt = root / "images_tr" / "Airport" / "airport_1.jpg"
    corrupt.write_bytes(b"not an image")  # a download cut short
    link = root / "images_tr" / "Airport" / "airport_4.jpg"
    link.unlink()
    link.symlink_to(corrupt)
    out = tmp_path / "aid_manual.csv"
    items = build_items(_compose_annotate("dataset=aid", f"dataset.root={root}", f"out={out}"))
    assert items.ids[:2] == ("airport_1", "airport_4")
    with serving(items, out) as page:
        for i, path in enumerate((corrupt, link)):
            status, body = page.get(f"/image/{i}.png")
            assert status == 500
            assert json.loads(body)["error"].startswith(f"{items.ids[i]} cannot be shown: {path}: cannot decode")
        for refused in (page.answer("airport_1", "airplane"), page.none("airport_1")):
            assert refused[0] == 409 and f"{corrupt}: cannot decode" in refused[1]["error"]
        assert page.flag("airport_1", "not an image")[0] == 200
        status, body = page.answer("airport_4", "airplane")  # refused before the page asked for the image
        assert status == 409 and "airport_4 cannot be shown" in body["error"]
        assert page.skip("airport_4")[0] == 200
        assert page.answer("beach_2", "sand")[0] == 200
    assert [r[:2] + r[5:6] for r in rows(out)[1:]] == [["airport_1", "", "flag"], ["airport_4", "", "skip"],
                                                       ["beach_2", "sand", "answer"]]  # fmt: skip


def test_a_training_run_reads_the_annotation_file(tmp_path):
    from splml.annotate.__main__ import build_items
    from splml.builders import build_datamodule
    from splml.train import train

    from .helpers import compose_train

    cache = tmp_path / "cache"
    out = tmp_path / "synthetic_manual.csv"
    tiny = ["dataset.datamodule.synthetic.n_train=48", "dataset.datamodule.synthetic.n_validation=24",
            "dataset.datamodule.synthetic.n_test=24", f"paths.cache_dir={cache}"]  # fmt: skip
    items = build_items(_compose_annotate(*tiny, f"out={out}"))
    with serving(items, out) as page:
        first = page.state()["current"]["id"]
        page.skip(first)
        chosen = _answer_everything(page, lambda sid, candidates: candidates[0])
        assert first not in chosen
        manual = ["labels=manual", f"labels.file={out}", "trainer.max_epochs=1"]
        with pytest.raises(ValueError, match=rf"1 were skipped by the annotator \(first: \['{first}'\]\)"):
            build_datamodule(compose_train(tmp_path / "refused", *manual, cache_dir=cache)).setup()
        state = page.state()  # skipped images come back once every other one has a row
        assert (state["current"]["id"], state["current"]["status"]) == (first, "skipped")
        chosen[first] = state["current"]["batches"][1][0]
        assert page.answer(first, chosen[first])[0] == 200
    results = train(compose_train(tmp_path / "run", *manual, cache_dir=cache))
    assert results["status"] == "completed"
    with (tmp_path / "run" / "observed_train_labels.csv").open() as fh:
        observed = dict(row.split(",", 1) for row in fh.read().splitlines()[1:])
    assert {sid: cls.strip('"') for sid, cls in observed.items()} == chosen
