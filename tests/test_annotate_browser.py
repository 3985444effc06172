"""The annotation page in a real headless Chromium: keyboard, clicks, held keys, broken images, undo,
zoom and bands, two tabs, two annotators and their merge."""

from __future__ import annotations

import numpy as np
import pytest

from splml.annotate.items import items_from_datamodule
from splml.annotate.merge import main as merge_main
from splml.annotate.shards import shard_info
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.labels import FullLabels, ManualSinglePositive

from .annotate_support import ANIMALS, Page, fake_items, rows, serving
from .browser import CHROMIUM_FLAGS, find_chromium


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium installed (looked for /usr/bin/chromium and chromium on PATH): install Debian's "
            "package with `apt-get install chromium` (.ci/run does) to run the browser tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests drive Chromium with Playwright for Python: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def reben_items(tiny_reben):
    return items_from_datamodule(ReBENDataModule(root=tiny_reben, labels=FullLabels()))


def _open(browser, port, errors=None):
    tab = browser.new_page(viewport={"width": 1280, "height": 860})
    if errors is not None:
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"http://127.0.0.1:{port}/")
    return tab


def _ready(tab, image_id=None):
    """Wait until the page shows ``image_id`` (when given) and takes input for it."""
    from playwright.sync_api import expect

    if image_id is not None:
        expect(tab.locator("#image-id")).to_have_text(image_id)
    tab.wait_for_function("() => !document.body.classList.contains('arming')")


def _press_on_layout(tab, key, code, **modifiers):
    """A key press as another keyboard layout sends it: ``key`` typed by the physical key ``code``."""
    for kind in ("keydown", "keyup"):
        tab.dispatch_event("body", kind, {"key": key, "code": code, "bubbles": True, **modifiers})


def test_annotating_by_keyboard_and_by_click_writes_the_file(browser, reben_items, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "manual.csv"
    ids = reben_items.ids
    with serving(reben_items, out, annotator="e2e", min_view_ms=60) as api:
        errors = []
        tab = _open(browser, api.port, errors)
        candidates = tab.locator("button.candidate")

        def batches() -> list[list[str]]:
            return api.state()["current"]["batches"]

        _ready(tab, ids[0])
        expect(candidates).to_have_count(4)
        # The image is really shown: a decoded 600 px PNG.
        tab.wait_for_function("() => document.getElementById('image').naturalWidth === 600")
        expected = []

        # Keyboard: 2 = second candidate of the first batch.
        expected.append((ids[0], batches()[0][1]))
        tab.keyboard.press("2")
        _ready(tab, ids[1])
        # N shows the next batch; 1 picks its first class.
        expected.append((ids[1], batches()[1][0]))
        tab.keyboard.press("n")
        expect(candidates.first).to_have_attribute("data-class", batches()[1][0])
        expect(tab.locator("#batch-position")).to_have_text("(2 / 5)")
        tab.keyboard.press("1")
        _ready(tab, ids[2])
        expect(tab.locator("#batch-position")).to_have_text("(1 / 5)")  # a new image starts at the first batch
        # Clicks: the fourth button, then the next-batch button and a button of that batch.
        expected.append((ids[2], batches()[0][3]))
        candidates.nth(3).click()
        _ready(tab, ids[3])
        expected.append((ids[3], batches()[1][2]))
        tab.get_by_role("button", name="Next batch of categories").click()
        candidates.nth(2).click()
        _ready(tab, ids[4])
        # "None of these" appears only once every batch has been seen.
        expect(tab.locator("#none")).to_be_hidden()
        # Skip by key, then Back twice (key, then button): the answers in the order given.
        expected.append((ids[4], ""))
        tab.keyboard.press("s")
        _ready(tab, ids[5])
        tab.keyboard.press("b")
        _ready(tab, ids[4])
        expect(tab.locator("#status")).to_have_text("skipped before")
        expect(tab.locator("#trail")).to_be_visible()
        tab.locator("#back").click()
        _ready(tab, ids[3])
        expect(tab.locator("#status")).to_have_text(f"answered: {expected[3][1]}")
        expect(tab.locator("button.candidate.current-answer")).to_have_count(0)  # it was in batch 2
        expected.append((ids[3], batches()[0][2]))
        tab.keyboard.press("3")
        _ready(tab, ids[4])  # on along the trail
        tab.keyboard.press("Escape")  # back to the queue
        _ready(tab, ids[5])
        expect(tab.locator("#trail")).to_be_hidden()
        expect(tab.locator("#progress-text")).to_contain_text(f"4 / {len(ids)} labelled · 1 skipped")
        expect(tab.locator("#histogram li").first).to_be_visible()
        expect(tab.locator("#history li")).to_have_count(5)

        # The reference map beside the image, with its legend.
        expect(tab.locator("#map-figure")).to_be_hidden()
        tab.keyboard.press("m")
        expect(tab.locator("#map-figure")).to_be_visible()
        tab.wait_for_function("() => document.getElementById('map').naturalWidth === 600")
        expect(tab.locator("#legend li").first).to_be_visible()

        # A second tab that has fallen behind cannot answer for an image already done.
        other = _open(browser, api.port)
        _ready(other, ids[5])
        expected.append((ids[5], batches()[0][0]))
        tab.keyboard.press("1")
        _ready(tab, ids[6])
        other.locator("button.candidate").nth(1).click()
        expect(other.locator("#notice")).to_contain_text("nothing was saved")
        expect(other.locator("#image-id")).to_have_text(ids[6])
        assert not errors, errors

    assert rows(out)[0] == ["image_id", "class_name", "annotator", "timestamp", "seconds", "kind", "note"]
    assert [tuple(r[:2]) for r in rows(out)[1:]] == expected
    assert [r[5] for r in rows(out)[1:]] == ["answer"] * 4 + ["skip", "change", "answer"]
    assert all(r[2] == "e2e" and float(r[4]) >= 0 for r in rows(out)[1:])


def test_a_held_key_a_double_click_and_a_quick_second_press_give_one_answer(browser, tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(6), out, min_view_ms=400) as api:
        tab = _open(browser, api.port)
        _ready(tab, "img0")
        tab.keyboard.down("Digit2")  # held: the browser repeats the key every ~30 ms
        for _ in range(15):
            tab.wait_for_timeout(30)
            tab.keyboard.down("Digit2")
        tab.keyboard.up("Digit2")
        _ready(tab, "img1")
        tab.locator("button.candidate").nth(1).dblclick()
        _ready(tab, "img2")
        tab.keyboard.press("Digit3")
        tab.wait_for_timeout(60)
        tab.keyboard.press("Digit3")  # 60 ms later: the next image is not on screen long enough
        _ready(tab, "img3")
        # Digits by position: on a layout where the digit row types "&" unshifted (AZERTY), code Digit1 still answers.
        _press_on_layout(tab, "&", "Digit1")
        _ready(tab, "img4")
        tab.wait_for_timeout(200)
        assert api.state()["current"]["id"] == "img4"
    assert [r[0] for r in rows(out)[1:]] == ["img0", "img1", "img2", "img3"]


def test_an_image_that_cannot_be_decoded_cannot_be_answered(browser, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "a.csv"
    with serving(fake_items(3, broken=(0,)), out, min_view_ms=60) as api:
        tab = _open(browser, api.port)
        error = tab.locator("#image-error")
        expect(error).to_contain_text("img0 cannot be shown: /data/images/img0.jpg: cannot identify image file")
        expect(tab.locator("#image")).to_be_hidden()
        expect(tab.locator("button.candidate").first).to_be_disabled()
        _ready(tab)
        tab.keyboard.press("1")
        tab.locator("button.candidate").first.click(force=True)
        tab.wait_for_timeout(200)
        assert rows(out)[1:] == []
        assert api.state()["current"]["id"] == "img0"
        tab.keyboard.press("f")
        tab.locator("#flag-note").fill("corrupt JPEG")
        tab.keyboard.press("Enter")
        _ready(tab, "img1")
        expect(error).to_be_hidden()
        expect(tab.locator("button.candidate").first).to_be_enabled()
    assert [r[:2] + r[5:] for r in rows(out)[1:]] == [["img0", "", "flag", "corrupt JPEG"]]


def test_undo_restores_the_previous_answer_in_the_file(browser, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "a.csv"
    items = fake_items(4)
    with serving(items, out, min_view_ms=60) as api:
        tab = _open(browser, api.port)
        _ready(tab, "img0")
        first = api.state()["current"]["batches"][0]
        tab.keyboard.press("1")
        _ready(tab, "img1")
        tab.keyboard.press("b")  # back to img0 and change its answer
        _ready(tab, "img0")
        tab.keyboard.press("2")
        _ready(tab, "img1")

        def manual() -> str:
            observed = ManualSinglePositive(out, missing="random").observe(
                np.ones((4, 5)), ids=list(items.ids), class_names=ANIMALS
            )
            return ANIMALS[int(observed[0].argmax())]

        assert manual() == first[1]
        _press_on_layout(tab, "u", "KeyF")  # Dvorak: U is typed by the key in F's place, and U is what counts
        _ready(tab, "img0")
        expect(tab.locator("#status")).to_have_text(f"answered: {first[0]}")
        expect(tab.locator("#notice")).to_contain_text(f"Undone: change {first[1]} for img0")
        assert manual() == first[0]  # the file says so too
        _press_on_layout(tab, "z", "KeyY", ctrlKey=True)  # QWERTZ Ctrl+Z: the first answer too, img0 is open
        expect(tab.locator("#status")).to_have_text("")
        expect(tab.locator("#undo")).to_be_disabled()
        _ready(tab, "img0")  # the same image in a new display: it takes input once shown again
        tab.keyboard.press("3")
        _ready(tab, "img1")
        # The history panel revisits an answer: a click on its thumbnail.
        tab.locator("#history button").first.click()
        _ready(tab, "img0")
        expect(tab.locator("#status")).to_have_text(f"answered: {first[2]}")
    assert [r[5] for r in rows(out)[1:]] == ["answer", "change", "undo", "undo", "answer"]
    assert rows(out)[-1][:2] == ["img0", first[2]]


def test_zoom_pan_and_band_choice(browser, reben_items, tmp_path):
    from playwright.sync_api import expect

    with serving(reben_items, tmp_path / "a.csv", min_view_ms=60) as api:
        tab = _open(browser, api.port)
        _ready(tab, reben_items.ids[0])
        image = tab.locator("#image")
        expect(image).to_have_attribute("src", "/image/0.png?composite=true&stretch=2-98")
        tab.select_option("#composite", "swir")
        tab.select_option("#stretch", "off")
        expect(image).to_have_attribute("src", "/image/0.png?composite=swir&stretch=off")
        tab.wait_for_function("() => document.getElementById('image').naturalWidth === 600")
        tab.reload()  # the choice persists
        _ready(tab, reben_items.ids[0])
        expect(tab.locator("#composite")).to_have_value("swir")
        expect(image).to_have_attribute("src", "/image/0.png?composite=swir&stretch=off")
        tab.keyboard.press("v")  # the next composite
        expect(image).to_have_attribute("src", "/image/0.png?composite=s1&stretch=off")
        tab.wait_for_function("() => document.getElementById('image').naturalWidth === 600")

        tab.keyboard.press("Equal")
        expect(tab.locator("#zoom-level")).to_have_text("150 %")
        frame = tab.locator("#image-frame").bounding_box()
        tab.mouse.move(frame["x"] + 100, frame["y"] + 100)
        tab.mouse.wheel(0, -100)
        expect(tab.locator("#zoom-level")).to_have_text("188 %")
        before = image.evaluate("img => img.style.transform")
        tab.mouse.down()
        tab.mouse.move(frame["x"] + 250, frame["y"] + 200, steps=4)
        tab.mouse.up()
        after = image.evaluate("img => img.style.transform")
        assert "scale(1.875)" in after and after != before  # panned
        tab.keyboard.press("0")
        expect(tab.locator("#zoom-level")).to_have_text("100 %")
        # Zoom is per image; the band choice stays.
        tab.keyboard.press("Equal")
        tab.keyboard.press("1")
        _ready(tab, reben_items.ids[1])
        expect(tab.locator("#zoom-level")).to_have_text("100 %")
        expect(image).to_have_attribute("src", "/image/1.png?composite=s1&stretch=off")


def test_two_annotators_on_two_shards_and_the_merge(browser, tmp_path, capsys):
    from playwright.sync_api import expect

    items = fake_items(8)
    files = []
    for k in (1, 2):
        info, positions = shard_info(items.ids, items.class_names, f"{k}/2", 0.25, 0)
        part = items.subset(positions, f"shard {info.label}")
        out = tmp_path / f"shard{k}.csv"
        files.append(out)
        with serving(part, out, annotator=f"annotator{k}", shard=info, min_view_ms=60) as api:
            tab = _open(browser, api.port)
            expect(tab.locator("#dataset")).to_contain_text(f"shard {k}/2")
            for image_id in part.ids:
                _ready(tab, image_id)
                tab.keyboard.press("1")  # both see the same candidate order: they agree on the overlap
            expect(tab.locator("#done")).to_be_visible()
            expect(tab.locator("#done-text")).to_contain_text(f"Your shard ({k}/2) is complete")
            tab.close()
    merged = tmp_path / "merged.csv"
    assert merge_main([str(files[0]), str(files[1]), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 images judged by both agree" in printed
    observed = ManualSinglePositive(merged).observe(np.ones((8, 5)), ids=list(items.ids), class_names=ANIMALS)
    assert (observed.sum(1) == 1).all()  # every image has its class


def test_the_page_says_when_every_image_is_done(browser, tmp_path):
    from playwright.sync_api import expect

    with serving(fake_items(2), tmp_path / "a.csv", min_view_ms=60) as api:
        api.answer("img0", "cat")
        api.answer("img1", "dog")
        tab = _open(browser, api.port)
        expect(tab.locator("#done")).to_be_visible()
        expect(tab.locator("#train-command")).to_contain_text(f"labels=manual labels.file={tmp_path / 'a.csv'}")
        expect(tab.locator("#progress-text")).to_contain_text("2 / 2 labelled")
        _ready(tab)
        tab.keyboard.press("b")  # back from the finished screen to the newest answer
        expect(tab.locator("#image-id")).to_have_text("img1")
        assert Page(api.port).state()["current"]["id"] == "img1"


def test_none_of_these_go_to_and_review_from_the_page(browser, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "a.csv"
    with serving(fake_items(4), out, min_view_ms=60) as api:
        errors = []
        tab = _open(browser, api.port, errors)
        _ready(tab, "img0")
        tab.keyboard.press("x")  # not before every batch has been seen
        tab.wait_for_timeout(200)
        assert api.state()["current"]["id"] == "img0"
        tab.keyboard.press("n")
        expect(tab.locator("#none")).to_be_visible()
        tab.keyboard.press("x")
        _ready(tab, "img1")
        chosen = api.state()["current"]["batches"][0][0]
        tab.keyboard.press("1")
        _ready(tab, "img2")
        # Go to by position: G focuses the field, Enter goes.
        tab.keyboard.press("g")
        expect(tab.locator("#goto-target")).to_be_focused()
        tab.keyboard.type("#1")
        tab.keyboard.press("Enter")
        _ready(tab, "img0")
        expect(tab.locator("#status")).to_have_text("none of these")
        # Go to by id, then review the answers of one class.
        tab.locator("#goto-target").fill("img3")
        tab.locator("#goto-target").press("Enter")
        _ready(tab, "img3")
        tab.select_option("#review", chosen)
        _ready(tab, "img1")
        expect(tab.locator("#trail-text")).to_contain_text(f"Reviewing the answers “{chosen}” (1 / 1)")
        expect(tab.locator("#status")).to_have_text(f"answered: {chosen}")
        tab.keyboard.press("Escape")
        _ready(tab, "img2")
        expect(tab.locator("#trail")).to_be_hidden()
        assert not errors, errors
    assert [r[:2] + r[5:6] for r in rows(out)[1:]] == [["img0", "", "none"], ["img1", chosen, "answer"]]


def test_the_printed_address_with_its_token_opens_the_page_off_loopback(browser, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "a.csv"
    with serving(fake_items(3), out, host="0.0.0.0", min_view_ms=60) as api:
        token = api.server.token
        context = browser.new_context()
        try:
            tab = context.new_page()
            tab.goto(f"http://127.0.0.1:{api.port}/")  # without the token: refused
            expect(tab.locator("body")).to_contain_text("needs its access token")
            tab.goto(f"http://127.0.0.1:{api.port}/?token={token}")  # the printed address
            assert tab.url == f"http://127.0.0.1:{api.port}/"  # the token left the address bar for a cookie
            _ready(tab, "img0")
            tab.keyboard.press("1")
            _ready(tab, "img1")
        finally:
            context.close()
    assert [r[0] for r in rows(out)[1:]] == ["img0"]
