"""Where the browser tests find Chromium and how they start it (shared by conftest.py and the test modules)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_chromium() -> str | None:
    path = os.environ.get("BONSAI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).is_file() else None


# Playwright's bundled browsers cannot be downloaded here: the system Chromium runs with these flags.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
