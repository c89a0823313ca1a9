"""The on-open notice and the pack's notes as a user sees them, in headless Chromium (see test_workflows_in_browser.py).

The notice's advice for each state of the models folder: a canonical file the download never made
(pick the release folder), another release held (pick it), an interrupted download (resume), a
release copied into diffusion_models (move it), nothing at all on a Mac (the MLX release); it covers
none of the loaders and closes with its button. And the note's inline code in the "Nodes 2.0" view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_workflows_in_browser import (  # skips this module too when Chromium or playwright is missing
    LOADERS,
    MIN_NOTE_TEXT_PX,
    NOTICE_TIMEOUT_MS,
    STEMS,
    Page,
    PlaywrightTimeout,
    canvas_state,
    load,
    note_text,
    notices,
    open_app,
    shot,
)

pytestmark = pytest.mark.comfyui


def open_with_models(site: dict[str, Any], browser: Any, kind: str, stem: str, *, platform: str | None = None) -> tuple[Page, str]:
    """Open ``stem`` with the models root ``kind`` (optionally the server reporting ``platform``); the notice's text."""
    site["use"](kind)
    page = open_app(browser, site["url"])
    if platform is not None:  # what GET /bonsai_image/installed says about the server's machine, as on a Mac
        def fake(route: Any) -> None:
            state = json.loads(route.fetch().text())
            route.fulfill(json={**state, "platform": platform})

        page.route("**/bonsai_image/installed", fake)
    load(page, stem)
    try:
        page.locator(".p-toast-message", has_text="Bonsai Image").first.wait_for(timeout=NOTICE_TIMEOUT_MS)
    except PlaywrightTimeout:
        pytest.fail(f"{stem} with models {kind!r}: no Bonsai notice within {NOTICE_TIMEOUT_MS} ms; on screen: {notices(page)}")
    return page, " ".join(t for t in notices(page) if "Bonsai Image" in t)


def assert_notice_covers_no_loader(page: Page) -> None:
    """The notice lies clear of the note and the loaders it talks about, and its close button dismisses it."""
    state = canvas_state(page)
    box = page.locator(".p-toast-message", has_text="Bonsai Image").first.bounding_box()
    assert box is not None
    s, (ox, oy) = state["scale"], state["offset"]
    for n in state["nodes"]:
        if n["type"] not in LOADERS and n["type"] != "MarkdownNote":
            continue
        x0, y0 = (n["pos"][0] + ox) * s, (n["pos"][1] - state["title_height"] + oy) * s
        x1, y1 = (n["pos"][0] + n["size"][0] + ox) * s, (n["pos"][1] + n["size"][1] + oy) * s
        apart = box["x"] >= x1 or box["x"] + box["width"] <= x0 or box["y"] >= y1 or box["y"] + box["height"] <= y0
        assert apart, f"the notice {box} covers {n['title']} #{n['id']} ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f})"
    page.locator(".p-toast-message", has_text="Bonsai Image").first.locator(".p-toast-close-button").click()
    page.wait_for_timeout(800)
    assert not [t for t in notices(page) if "Bonsai Image" in t], "the notice stayed after its close button"


def test_notice_points_to_the_snapshot_folder_for_a_canonical_file(site: dict[str, Any], browser: Any, shots: Path) -> None:
    page, text = open_with_models(site, browser, "snapshots", "Bonsai ternary 1024 three loaders")
    try:
        assert "not downloaded yet" not in text and "--to-canonical" in text, text
        assert "bonsai-image-ternary-4B-gemlite-2bit/ -- pick it in model_name" in text, text
        shot(page, shots / "notice-canonical-file.jpg")
        assert_notice_covers_no_loader(page)
    finally:
        page.close()
        site["use"]("full")


def test_notice_with_other_releases_interrupted_and_misplaced(site: dict[str, Any], browser: Any, shots: Path) -> None:
    page, text = open_with_models(site, browser, "mixed", "Bonsai ternary 1024 three loaders")
    try:
        # the text encoder and VAE of the interrupted release: resume, not download 4.5 GB
        assert "run the same download again to resume" in text and "bonsai.py download ternary" in text, text
        # the canonical file: the ternary release the user holds (MLX) is the folder to pick
        assert "bonsai-image-ternary-4B-mlx-2bit/ -- pick it in model_name" in text, text
        assert "models/diffusion_models/bonsai-image-binary-4B-gemlite-1bit" in text and "move the folder to models/bonsai/" in text, text
        assert "not downloaded yet" not in text, text
    finally:
        page.close()
    page, text = open_with_models(site, browser, "mixed", "Bonsai binary text to image 1024")
    try:
        assert "pick one of these installed entries" in text and "bonsai-image-ternary-4B-mlx-2bit/" in text, text
        shot(page, shots / "notice-pick-installed.jpg")
    finally:
        page.close()
        site["use"]("full")


def test_notice_on_a_mac_names_the_mlx_release(site: dict[str, Any], browser: Any) -> None:
    page, text = open_with_models(site, browser, "empty", STEMS[0], platform="darwin")
    try:
        assert "models not downloaded yet" in text and "--release mlx" in text and "On this Mac" in text, text
    finally:
        page.close()
    page, text = open_with_models(site, browser, "empty", STEMS[0])
    try:
        assert "--release mlx" not in text, text  # not on this (Linux) server
    finally:
        page.close()
        site["use"]("full")


def test_note_inline_code_readable_in_nodes_2_view(site: dict[str, Any], browser: Any, shots: Path) -> None:
    """In the "Nodes 2.0" (Vue nodes) view the note's inline code was blue on translucent blue over the note colour."""
    site["use"]("full")
    page = open_app(browser, site["url"])
    try:
        page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); }")
        load(page, STEMS[0])
        page.wait_for_timeout(1500)
        text = note_text(page)
        assert text["code_color"] == text["p_color"], f"inline code drawn in {text['code_color']}, the note text in {text['p_color']}"
        assert text["px"] >= MIN_NOTE_TEXT_PX, text
        shot(page, shots / "nodes-2-note.jpg")
    finally:
        page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); }")
        page.close()
