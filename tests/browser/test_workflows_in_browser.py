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
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest
from harness.server import comfyui_server

pytestmark = pytest.mark.comfyui


def _chromium() -> str | None:
    path = os.environ.get("BONSAI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).is_file() else None


CHROMIUM = _chromium()
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

# Playwright's bundled browsers cannot be downloaded here: the system Chromium runs with these flags.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
VIEWPORT = {"width": 1920, "height": 1080}
MIN_READABLE_ZOOM = 0.6  # the frontend draws blank boxes below ~0.57 (8 px minimum font / 14 px text)
LEFT_BAR, TOP_BAR = 56, 36  # the frontend's icon sidebar and tab bar cover these strips of the canvas
LOADERS = {"BonsaiPipelineLoader", "BonsaiModelLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader", "LoraLoaderModelOnly"}
RUN_TIMEOUT_S = 300
NOTICE_TIMEOUT_MS = 15_000
STEMS = [p.stem for p in we.ui_workflows()]


@pytest.fixture(scope="module")
def site(comfyui: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The server, and ``use(kind)`` switching its models root between ``"empty"`` and ``"full"``."""
    base = tmp_path_factory.mktemp("browser")
    roots = {kind: base / f"models_{kind}" for kind in ("empty", "full", "snapshots", "mixed")}
    for root in roots.values():
        for kind in ("bonsai", "diffusion_models", "loras"):
            (root / kind).mkdir(parents=True, exist_ok=True)
    we.install_fixtures(roots["full"], base / "input", comfyui.root)
    install_other_states(roots, comfyui.root)
    link = base / "models"  # what the server's extra_model_paths.yaml names

    def use(kind: str) -> None:
        tmp = base / f".models.{kind}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(roots[kind], target_is_directory=True)
        os.replace(tmp, link)  # atomic: the server never sees the folder missing

    use("full")
    with comfyui_server(comfyui.root, base) as server:
        yield {"url": server.url, "out": server.out, "use": use}


def install_other_states(roots: dict[str, Path], comfy_root: Path) -> None:
    """``snapshots``: the gemlite releases as downloaded (no --to-canonical file). ``mixed``: a user who holds
    another release (ternary MLX), an interrupted gemlite download, and a release copied into diffusion_models."""
    from bonsai_tools.synth import make_snapshot_fixture

    full_bonsai = roots["full"] / "bonsai"
    for snap in full_bonsai.iterdir():
        if snap.is_dir():
            (roots["snapshots"] / "bonsai" / snap.name).symlink_to(snap, target_is_directory=True)
    tok = comfy_root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    mixed = roots["mixed"]
    make_snapshot_fixture("ternary", "mlx", mixed / "bonsai", seed=3, tokenizer_src=tok)
    partial = make_snapshot_fixture("ternary", "gemlite", mixed / "bonsai", seed=3, tokenizer_src=tok)
    shutil.rmtree(partial / "transformer-gemlite-int2")
    cache = partial / ".cache" / "huggingface" / "download" / "transformer-gemlite-int2"
    cache.mkdir(parents=True)
    (cache / "Qm9uc2Fp.0a1b2c.incomplete").write_bytes(b"\0" * 4096)
    (mixed / "diffusion_models" / "bonsai-image-binary-4B-gemlite-1bit" / "transformer-gemlite-int1").mkdir(parents=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("BONSAI_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def shot(page: Page, path: Path) -> None:
    """A JPEG screenshot of the window (small enough to commit under docs/screenshots/)."""
    page.screenshot(path=str(path), type="jpeg", quality=80)


def open_app(browser: Any, url: str) -> Page:
    """A fresh page with the frontend loaded (its first-run template dialog closed)."""
    page = browser.new_page(viewport=VIEWPORT)
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
    scale: c.ds.scale, offset: [...c.ds.offset], low_quality: c.low_quality,
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
    if x0 < LEFT_BAR or y0 < TOP_BAR or x1 > VIEWPORT["width"] or y1 > VIEWPORT["height"]:
        return f"{node['title']} #{node['id']} spans screen ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) in a {VIEWPORT} window"
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


@pytest.mark.parametrize("stem", STEMS)
def test_workflow_opens_clean_with_note_and_loaders_in_view(site: dict[str, Any], browser: Any, shots: Path, stem: str) -> None:
    site["use"]("full")
    page = open_app(browser, site["url"])
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
        shot(page, shots / f"{stem}.jpg")
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


def test_template_browser_titles_and_fit(site: dict[str, Any], browser: Any, shots: Path) -> None:
    site["use"]("full")
    page = open_app(browser, site["url"])
    try:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text("Bonsai Image", exact=True).first.click()
        page.wait_for_timeout(1500)
        for stem in STEMS:
            assert page.get_by_text(stem, exact=True).count() >= 1, f"template {stem!r} is not listed under its name"
        shot(page, shots / "template-browser.jpg")
        biggest = max(STEMS, key=lambda s: len(we.load_json(we.WORKFLOWS / f"{s}.json")["nodes"]))
        page.get_by_text(biggest, exact=True).first.click()
        page.wait_for_function("window.app.graph.nodes.length > 5", timeout=30_000)
        page.wait_for_timeout(1500)
        state = canvas_state(page)
        assert state["scale"] >= MIN_READABLE_ZOOM and not state["low_quality"], (
            f"{biggest} opened from the template browser at zoom {state['scale']:.2f} (nodes drawn as blank boxes)"
        )
        shot(page, shots / "template-opened.jpg")
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
