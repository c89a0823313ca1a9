"""The shipped workflows in ComfyUI's own frontend, in headless Chromium (driven by Playwright).

A real ``main.py --cpu`` server with the pack in ``custom_nodes/`` (tests/harness/server.py) serves the
frontend; its models root is a link switched between an empty folder (a fresh install) and tiny
synthetic models under the exact names the workflows use. Checked as a user sees it:

* every UI workflow opens with no missing-node dialog, no node in error, and its note and loaders on
  screen at a zoom where the frontend draws node contents (not the blank low-detail boxes);
* the template browser lists the workflows under readable names, and opening one from there fits
  the graph at a readable zoom;
* with no models, opening a workflow says which folder is missing and how to get it, before Run;
* the 512 workflow queued with the page's Run button ends with an image in the Save Image node.

Needs Chromium (Debian ``apt-get install chromium``, or ``BONSAI_CHROMIUM=/path/to/chrome``) and the
``playwright`` package; without them the module is skipped with the reason. Screenshots go to
``$BONSAI_SCREENSHOTS`` when set (``docs/screenshots/`` was made that way), else the test's tmp folder.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest
from browser_env import find_chromium

pytestmark = pytest.mark.comfyui


CHROMIUM = find_chromium()
try:
    from playwright.sync_api import Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None
if CHROMIUM is None or sync_playwright is None:
    pytest.skip(
        "BROWSER TESTS SKIPPED: "
        + ("no Chromium found (apt-get install chromium, or set BONSAI_CHROMIUM)" if CHROMIUM is None else "playwright is not installed")
        + " -- the shipped workflows were NOT opened in a browser",
        allow_module_level=True,
    )

VIEWPORT = {"width": 1920, "height": 1080}
LAPTOP = {"width": 1366, "height": 768}  # the smallest laptop screen still sold: templates must open readable there too
VIEWPORTS = [VIEWPORT, LAPTOP]
MIN_READABLE_ZOOM = 0.6  # the frontend draws blank boxes below ~0.57 (8 px minimum font / 14 px text)
MIN_NOTE_TEXT_PX = 7.5  # rendered size of the note's body text (the frontend's 10 px note text was ~6 px at 1366x768)
LEFT_BAR, TOP_BAR = 56, 36  # the frontend's icon sidebar and tab bar cover these strips of the canvas
LOADERS = {"BonsaiPipelineLoader", "BonsaiModelLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader", "LoraLoaderModelOnly"}
RUN_TIMEOUT_S = 300
NOTICE_TIMEOUT_MS = 15_000
STEMS = [p.stem for p in we.ui_workflows()]


def shot(page: Page, path: Path) -> None:
    """A JPEG screenshot of the window (small enough to commit under docs/screenshots/)."""
    page.screenshot(path=str(path), type="jpeg", quality=80)


def open_app(browser: Any, url: str, viewport: dict[str, int] = VIEWPORT) -> Page:
    """A fresh page with the frontend loaded (its first-run template dialog closed)."""
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph", timeout=120_000)
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")
    return page


def load(page: Page, stem: str) -> None:
    """Open the UI file as the frontend opens a file (its stored view restored)."""
    wf = we.load_json(we.WORKFLOWS / f"{stem}.json")
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [wf, stem])
    page.wait_for_timeout(1500)


STATE_JS = """() => {
  const c = window.app.canvas;
  return {
    scale: c.ds.scale, offset: [...c.ds.offset], low_quality: c.low_quality, view: [window.innerWidth, window.innerHeight],
    title_height: window.LiteGraph.NODE_TITLE_HEIGHT,
    nodes: window.app.graph.nodes.map((n) => ({
      id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size], mode: n.mode,
      registered: n.type in window.LiteGraph.registered_node_types, has_errors: !!n.has_errors,
      text: n.type === "MarkdownNote" ? String(n.widgets?.[0]?.value ?? "") : "",
    })),
  };
}"""


def canvas_state(page: Page) -> dict[str, Any]:
    return page.evaluate(STATE_JS)


def notices(page: Page) -> list[str]:
    """Texts of the toasts and dialogs on screen (missing nodes, missing models, errors)."""
    page.wait_for_timeout(500)
    return [
        t.strip()
        for t in page.locator(".p-toast-message, [role='dialog'], [role='alertdialog'], [data-testid='error-overlay']").all_inner_texts()
        if t.strip()
    ]


def off_screen(state: dict[str, Any], node: dict[str, Any]) -> str | None:
    """Why ``node`` is not fully on the visible canvas (title bar included), or None."""
    s, (ox, oy) = state["scale"], state["offset"]
    x0, y0 = (node["pos"][0] + ox) * s, (node["pos"][1] - state["title_height"] + oy) * s
    x1, y1 = (node["pos"][0] + node["size"][0] + ox) * s, (node["pos"][1] + node["size"][1] + oy) * s
    width, height = state["view"]
    if x0 < LEFT_BAR or y0 < TOP_BAR or x1 > width or y1 > height:
        return f"{node['title']} #{node['id']} spans screen ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) in a {width}x{height} window"
    return None


def assert_note_and_loaders_in_view(state: dict[str, Any], stem: str) -> dict[str, Any]:
    nodes = state["nodes"]
    notes = [n for n in nodes if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, f"{stem}: expected one instruction note, got {len(notes)}"
    note = notes[0]
    assert note["pos"][1] <= min(n["pos"][1] for n in nodes), f"{stem}: the note is not at the top of the graph"
    loaders = [n for n in nodes if n["type"] in LOADERS]
    assert loaders, f"{stem}: no loader node"
    problems = [p for n in [note, *loaders] if (p := off_screen(state, n))]
    assert not problems, f"{stem}: opened with the note/loaders off screen: {problems}"
    assert state["scale"] >= MIN_READABLE_ZOOM and not state["low_quality"], f"{stem}: opened at zoom {state['scale']:.2f}"
    return note


NOTE_TEXT_JS = """() => {
  const bodies = document.querySelectorAll('.tiptap, .comfy-markdown-content');  // classic canvas, Nodes 2.0
  const body = [...bodies].find((e) => e.querySelector('a[href*="prism-ml/bonsai-image-"]'));
  if (!body) return null;
  const p = body.querySelector('p');
  const r = p.getBoundingClientRect();
  const code = body.querySelector('code');
  return {
    px: parseFloat(getComputedStyle(p).fontSize) * r.height / p.offsetHeight,  // CSS size times the canvas transform
    overflow: body.scrollHeight - body.clientHeight,
    p_color: getComputedStyle(p).color, code_color: code ? getComputedStyle(code).color : null,
  };
}"""


def note_text(page: Page) -> dict[str, Any]:
    found = page.evaluate(NOTE_TEXT_JS)
    assert found is not None, "no Bonsai note body on the page"
    return found


def size_name(viewport: dict[str, int]) -> str:
    return f"{viewport['width']}x{viewport['height']}"


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=size_name)
@pytest.mark.parametrize("stem", STEMS)
def test_workflow_opens_clean_with_note_and_loaders_in_view(
    site: dict[str, Any], browser: Any, shots: Path, stem: str, viewport: dict[str, int]
) -> None:
    site["use"]("full")
    page = open_app(browser, site["url"], viewport)
    try:
        load(page, stem)
        state = canvas_state(page)
        unregistered = [f"{n['type']} #{n['id']}" for n in state["nodes"] if not n["registered"]]
        assert not unregistered, f"{stem}: node types the server does not know (missing-node dialog): {unregistered}"
        in_error = [f"{n['title']} #{n['id']}" for n in state["nodes"] if n["has_errors"]]
        assert not in_error, f"{stem}: nodes drawn in error: {in_error}"
        shown = notices(page)
        assert not shown, f"{stem}: opened with notices on screen (missing nodes/models or errors): {shown}"
        assert_note_and_loaders_in_view(state, stem)
        text = note_text(page)
        assert text["px"] >= MIN_NOTE_TEXT_PX and text["overflow"] <= 2, f"{stem} at {size_name(viewport)}: note text {text}"
        shot(page, shots / (f"{stem}.jpg" if viewport == VIEWPORT else f"{stem} {size_name(viewport)}.jpg"))
    finally:
        page.close()


@pytest.mark.parametrize("stem", STEMS)
def test_missing_models_are_explained_on_open(site: dict[str, Any], browser: Any, shots: Path, stem: str) -> None:
    site["use"]("empty")
    try:
        page = open_app(browser, site["url"])
        try:
            load(page, stem)
            state = canvas_state(page)
            note = assert_note_and_loaders_in_view(state, stem)
            names = we.model_names(we.load_json(we.API_DIR / f"{stem}.json"))
            # Both notices are asynchronous (extension hook, frontend model scan): wait for them, then read.
            expected = ["Bonsai Image: models not downloaded yet"] + [f"{n} is missing" for n in names.get("model_name", ())]
            for line in expected:
                try:
                    page.get_by_text(line).first.wait_for(timeout=NOTICE_TIMEOUT_MS)
                except PlaywrightTimeout:
                    pytest.fail(f"{stem}: {line!r} not shown within {NOTICE_TIMEOUT_MS} ms of opening; on screen: {notices(page)}")
            text = " ".join(notices(page))
            folders = {
                v.removeprefix("bonsai/").split("/")[0] for k in ("snapshot", "text_encoder", "vae_folder") for v in names.get(k, ())
            }
            for folder in folders:
                assert folder in text, f"{stem}: the notice does not name {folder!r}: {text!r}"
                assert f"models/bonsai/{folder}/" in note["text"], f"{stem}: the note does not name models/bonsai/{folder}/"
            for how in ("Bonsai Download Model", "bonsai.py download"):
                assert how in text and how in note["text"], f"{stem}: neither notice nor note says {how!r}"
            if stem == STEMS[0]:
                shot(page, shots / "missing-models-on-open.jpg")
        finally:
            page.close()
    finally:
        site["use"]("full")


def open_template_browser(page: Page) -> None:
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text("Bonsai Image", exact=True).first.click()
    page.wait_for_timeout(1500)


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=size_name)
def test_template_browser_titles_and_fit(site: dict[str, Any], browser: Any, shots: Path, viewport: dict[str, int]) -> None:
    """Every template opened from the template browser is fitted at a zoom where nodes and note text are drawn."""
    site["use"]("full")
    page = open_app(browser, site["url"], viewport)
    try:
        open_template_browser(page)
        for stem in STEMS:
            assert page.get_by_text(stem, exact=True).count() >= 1, f"template {stem!r} is not listed under its name"
        if viewport == VIEWPORT:
            shot(page, shots / "template-browser.jpg")
        problems = []
        for i, stem in enumerate(STEMS):
            if i:
                open_template_browser(page)
            page.get_by_text(stem, exact=True).first.click()
            page.wait_for_function("window.app.graph.nodes.some((n) => n.type === 'MarkdownNote')", timeout=30_000)
            page.wait_for_timeout(1500)
            state = canvas_state(page)
            text = note_text(page)
            if state["scale"] < MIN_READABLE_ZOOM or state["low_quality"] or text["px"] < MIN_NOTE_TEXT_PX:
                problems.append(f"{stem}: zoom {state['scale']:.2f}, note text {text['px']:.1f} px")
            if stem.startswith("Bonsai ternary edit 2"):
                shot(page, shots / f"template-opened {size_name(viewport)}.jpg")
        assert not problems, f"opened from the template browser at {size_name(viewport)}: {problems}"
    finally:
        page.close()


def _history(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/history", timeout=10) as r:  # noqa: S310 (local test server)
        return json.loads(r.read())


def test_queue_512_workflow_from_the_page(site: dict[str, Any], browser: Any, shots: Path) -> None:
    site["use"]("full")
    stem = next(s for s in STEMS if s.endswith("512"))
    before = set(_history(site["url"]))
    page = open_app(browser, site["url"])
    try:
        load(page, stem)
        page.get_by_role("button", name="Run", exact=True).first.click()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        entry: dict[str, Any] | None = None
        while time.monotonic() < deadline and entry is None:
            time.sleep(2)
            done = {k: v for k, v in _history(site["url"]).items() if k not in before and v.get("status", {}).get("completed")}
            entry = next(iter(done.values()), None)
        assert entry is not None, f"{stem}: no finished prompt within {RUN_TIMEOUT_S}s; on screen: {notices(page)}"
        images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
        assert images, f"{stem}: the prompt finished without an image: {entry['outputs']}"
        saved = site["out"] / images[0].get("subfolder", "") / images[0]["filename"]
        size, std, _ = we.image_stats(saved)
        assert size == (512, 512) and std > 1.0, f"{saved}: {size}, std {std:.2f}"
        # The Save Image node on the page shows the picture (the frontend fetched it from /view).
        page.wait_for_function(
            "() => window.app.graph.nodes.some((n) => n.type === 'SaveImage' && (n.imgs?.length ?? 0) > 0)", timeout=60_000
        )
        shot(page, shots / "queued-512.jpg")
    finally:
        page.close()
