"""Take the README's screenshot of the annotation page: docs/annotate.png.

    python docs/make_annotate_screenshot.py                     # dataset=synthetic
    python docs/make_annotate_screenshot.py paths.cache_dir=... # Hydra overrides of conf/annotate.yaml

Serves the page for the dataset (a throwaway annotation file), answers a dozen images in
headless Chromium by keyboard as an annotator would (one skipped, one flagged), turns the
reference map on and saves the page, with its history of answers and the band and contrast
choices. Needs Debian's chromium and Playwright for Python, like the browser tests.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "annotate.png"
sys.path.insert(0, str(REPO))  # for tests.browser: the same Chromium settings as the tests


def main(overrides: list[str]) -> Path:
    from hydra import compose, initialize_config_dir
    from playwright.sync_api import expect, sync_playwright

    from splml.annotate.__main__ import build_items, next_steps
    from splml.annotate.server import AnnotationServer
    from splml.annotate.session import AnnotationSession
    from splml.builders import config_dir, register_resolvers
    from splml.io.label_files import AnnotationLog
    from tests.browser import CHROMIUM_FLAGS, find_chromium

    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the page shows the file as given: a short relative path
        out = Path("labels/synthetic_manual.csv")
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("annotate", overrides=["dataset=synthetic", f"out={out}", "annotator=maria", *overrides])
        items = build_items(cfg)
        annotations = AnnotationLog(out, items.ids, items.class_names)
        session = AnnotationSession(
            items, annotations, cfg.annotator, order_seed=cfg.order_seed,
            next_steps=next_steps(["dataset=synthetic", *overrides], str(out)), min_view_ms=cfg.min_view_ms,
        )  # fmt: skip
        server = AnnotationServer(session, "127.0.0.1", 0, cfg.display_size)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1360, "height": 1000})
                page.goto(server.url)
                ready = "() => !document.body.classList.contains('arming')"
                for key in "2131n42s3f14123":
                    shown = page.locator("#image-id").text_content()
                    page.wait_for_function(ready)
                    page.wait_for_timeout(1500)  # a human-like pace, so the rate per minute is plausible
                    page.keyboard.press(key)
                    if key == "f":
                        page.locator("#flag-note").fill("cloud shadow over most of the patch")
                        page.keyboard.press("Enter")
                    if key != "n":
                        expect(page.locator("#image-id")).not_to_have_text(shown)
                page.wait_for_function(ready)
                page.keyboard.press("n")
                page.keyboard.press("m")
                page.wait_for_function("() => document.getElementById('map').naturalWidth > 0")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#history img')].every(img => img.complete)"
                )
                page.screenshot(path=str(TARGET), full_page=True)
                browser.close()
        finally:
            server.shutdown()
            server.server_close()
            annotations.close()
    return TARGET


if __name__ == "__main__":
    print(main(sys.argv[1:]))
