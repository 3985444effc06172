"""The annotation page in a real headless Chromium: keyboard, clicks, two tabs, the map view."""

from __future__ import annotations

import pytest

from splml.annotate.items import items_from_datamodule
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.labels import FullLabels

from .annotate_support import Page, rows, serving
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


def test_annotating_by_keyboard_and_by_click_writes_the_file(browser, reben_items, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "manual.csv"
    ids = reben_items.ids
    with serving(reben_items, out, annotator="e2e") as api:
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"http://127.0.0.1:{api.port}/")
        image_id = tab.locator("#image-id")
        candidates = tab.locator("button.candidate")

        def batches() -> list[list[str]]:
            return api.state()["current"]["batches"]

        expect(image_id).to_have_text(ids[0])
        expect(candidates).to_have_count(4)
        # The image is really shown: a decoded 600 px PNG.
        tab.wait_for_function("() => document.getElementById('image').naturalWidth === 600")
        expected = []

        # Keyboard: 2 = second candidate of the first batch.
        expected.append((ids[0], batches()[0][1]))
        tab.keyboard.press("2")
        expect(image_id).to_have_text(ids[1])
        # N shows the next batch; 1 picks its first class.
        expected.append((ids[1], batches()[1][0]))
        tab.keyboard.press("n")
        expect(candidates.first).to_have_attribute("data-class", batches()[1][0])
        expect(tab.locator("#batch-position")).to_have_text("(2 / 5)")
        tab.keyboard.press("1")
        expect(image_id).to_have_text(ids[2])
        expect(tab.locator("#batch-position")).to_have_text("(1 / 5)")  # a new image starts at the first batch
        # Clicks: the fourth button, then the next-batch button and a button of that batch.
        expected.append((ids[2], batches()[0][3]))
        candidates.nth(3).click()
        expect(image_id).to_have_text(ids[3])
        expected.append((ids[3], batches()[1][2]))
        tab.get_by_role("button", name="Next batch of categories").click()
        candidates.nth(2).click()
        expect(image_id).to_have_text(ids[4])
        # Skip by key, then Back twice (key, then button) and a new answer for ids[3].
        expected.append((ids[4], ""))
        tab.keyboard.press("s")
        expect(image_id).to_have_text(ids[5])
        tab.keyboard.press("b")
        expect(image_id).to_have_text(ids[4])
        expect(tab.locator("#status")).to_have_text("skipped before")
        tab.get_by_role("button", name="Back").click()
        expect(image_id).to_have_text(ids[3])
        expect(tab.locator("#status")).to_have_text(f"answered: {expected[3][1]}")
        expect(tab.locator("button.candidate.current-answer")).to_have_count(0)  # it was in batch 2
        expected.append((ids[3], batches()[0][2]))
        tab.keyboard.press("3")
        expect(image_id).to_have_text(ids[5])  # the next image without a row (ids[4] was skipped)
        expect(tab.locator("#progress-text")).to_contain_text(f"4 / {len(ids)} labelled · 1 skipped")
        histogram = tab.locator("#histogram li")
        expect(histogram.first).to_be_visible()

        # The reference map beside the image, with its legend.
        expect(tab.locator("#map-figure")).to_be_hidden()
        tab.keyboard.press("m")
        expect(tab.locator("#map-figure")).to_be_visible()
        tab.wait_for_function("() => document.getElementById('map').naturalWidth === 600")
        expect(tab.locator("#legend li").first).to_be_visible()
        tab.screenshot(path=str(tmp_path / "page.png"))

        # A second tab that has fallen behind cannot answer for an image already done.
        other = browser.new_page()
        other.goto(f"http://127.0.0.1:{api.port}/")
        expect(other.locator("#image-id")).to_have_text(ids[5])
        expected.append((ids[5], batches()[0][0]))
        tab.keyboard.press("1")
        expect(image_id).to_have_text(ids[6])
        other.locator("button.candidate").nth(1).click()
        expect(other.locator("#notice")).to_contain_text("no longer the current image")
        expect(other.locator("#image-id")).to_have_text(ids[6])
        assert not errors, errors

    assert rows(out)[0] == ["image_id", "class_name", "annotator", "timestamp", "seconds"]
    assert [tuple(r[:2]) for r in rows(out)[1:]] == expected
    assert all(r[2] == "e2e" and float(r[4]) >= 0 for r in rows(out)[1:])


def test_the_page_says_when_every_image_is_done(browser, tmp_path):
    from playwright.sync_api import expect

    from .annotate_support import fake_items

    with serving(fake_items(2), tmp_path / "a.csv") as api:
        api.answer("img0", "cat")
        api.answer("img1", "dog")
        tab = browser.new_page()
        tab.goto(f"http://127.0.0.1:{api.port}/")
        expect(tab.locator("#done")).to_be_visible()
        expect(tab.locator("#train-command")).to_contain_text(f"labels=manual labels.file={tmp_path / 'a.csv'}")
        expect(tab.locator("#progress-text")).to_contain_text("2 / 2 labelled")
        tab.keyboard.press("b")  # back from the finished screen to the last image
        expect(tab.locator("#image-id")).to_have_text("img1")
        assert Page(api.port).state()["current"]["id"] == "img1"
