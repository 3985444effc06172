"""Headless Chromium for the page tests: Debian's chromium driven by Playwright for Python.

Playwright's own browser download cannot run here (no access to its servers), so the system
Chromium is launched instead (``SPLML_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: As root, in a container, with no network beyond the package registries: no sandbox, no GPU,
#: and none of the background connections that the closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None when none is installed."""
    candidates = [os.environ.get("SPLML_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]  # fmt: skip
    return next((c for c in candidates if c and Path(c).is_file()), None)
