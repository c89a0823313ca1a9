"""What a shipped UI workflow shows on open, read from the files (no ComfyUI needed).

The browser test (tests/browser/) checks the same things in the real frontend; these checks run
everywhere and say which file and which part is wrong:

* the template title is the file name, so names are short words (no ``_``/``-``, which the frontend
  shows raw in the title and as spaces in the card text);
* the note is the top-left node and says what to download, from where, and the two ways to get it;
* the stored view (``extra.ds``) puts the note and the loaders on screen at a readable zoom;
* the graph's extent keeps the template browser's fit (75 % of a 1920x1080 window) readable;
* model metadata: HF ``resolve/main`` URLs of the release the loaders name, target folder ``bonsai``;
* the LoRA workflow calls its LoRA names placeholders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest

REPO = Path(__file__).resolve().parents[2]
UI_FILES = we.ui_workflows()
LOADERS = {"BonsaiPipelineLoader", "BonsaiModelLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader", "LoraLoaderModelOnly"}
TITLE_HEIGHT = 30  # LiteGraph's node title bar, drawn above a node's pos
SCREEN = (1920, 1080)
SCREENS = [(1920, 1080), (1366, 768)]  # a desktop and the smallest laptop screen still sold
FIT_ZOOM_1366 = 0.65  # the template fit at 1366x768 keeps this margin above the 0.6 low-detail threshold
CHROME = (56, 36)  # the frontend's left icon bar and top tab bar
MIN_ZOOM = 0.6  # below ~0.57 the frontend draws nodes as blank boxes
FIT_MARGIN = 0.75  # the template browser fits the graph into 75 % of the window
HF = re.compile(r"https://huggingface\.co/prism-ml/(bonsai-image-(?:binary|ternary)-4B-[a-z0-9-]+)/resolve/main/(.+)")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _note(ui: dict[str, Any]) -> dict[str, Any]:
    notes = [n for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert len(notes) == 1, f"expected one note, found {len(notes)}"
    return notes[0]


def _box(node: dict[str, Any]) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _snapshot_folders(ui: dict[str, Any]) -> set[str]:
    """Release folders under models/bonsai that the loaders' widget values point into."""
    out = set()
    for n in ui["nodes"]:
        if n["type"] in ("BonsaiPipelineLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader"):
            value = n["widgets_values"][0]
            out.add(value.removeprefix("bonsai/").split("/")[0])
    return out


def test_every_workflow_is_checked() -> None:
    assert len(UI_FILES) >= 7, [p.name for p in UI_FILES]


@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_file_name_is_a_readable_template_title(path: Path) -> None:
    stem = path.stem
    assert re.fullmatch(r"Bonsai [A-Za-z0-9 ]+", stem), f"{stem!r}: the template browser shows this as the title; use words and spaces"
    assert len(stem) <= 34, f"{stem!r}: {len(stem)} characters, the template card cuts titles after about 34"
    assert (we.WORKFLOWS / f"{stem}.jpg").is_file(), f"{stem}: no same-name .jpg card"
    assert (we.API_DIR / f"{stem}.json").is_file(), f"{stem}: no API twin in workflows/api/"


@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_note_on_top_says_what_to_get_and_how(path: Path) -> None:
    ui = we.load_json(path)
    note = _note(ui)
    others = [n for n in ui["nodes"] if n is not note]
    assert note["pos"][1] <= min(n["pos"][1] for n in others), f"{path.stem}: the note is not at the top"
    assert note["pos"][0] <= min(n["pos"][0] for n in others), f"{path.stem}: the note is not at the left"
    text = note["widgets_values"][0]
    for folder in _snapshot_folders(ui):
        assert f"models/bonsai/{folder}/" in text, f"{path.stem}: the note does not name models/bonsai/{folder}/"
        assert f"https://huggingface.co/prism-ml/{folder}" in text, f"{path.stem}: the note does not link the {folder} repo"
    assert "Bonsai Download Model" in text, f"{path.stem}: the note does not name the Download node"
    assert re.search(r"python custom_nodes/[\w.-]+/bonsai\.py download (ternary|binary)", text), f"{path.stem}: no CLI command in the note"


@pytest.mark.parametrize("screen", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_stored_view_shows_note_and_loaders(path: Path, screen: tuple[int, int]) -> None:
    ui = we.load_json(path)
    ds = ui["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert scale >= MIN_ZOOM, f"{path.stem}: stored zoom {scale}"
    shown = [_note(ui)] + [n for n in ui["nodes"] if n["type"] in LOADERS]
    assert len(shown) >= 2, f"{path.stem}: no loader node"
    for n in shown:
        x0, y0, x1, y1 = _box(n)
        sx0, sy0, sx1, sy1 = (x0 + ox) * scale, (y0 + oy) * scale, (x1 + ox) * scale, (y1 + oy) * scale
        assert sx0 >= CHROME[0] and sy0 >= CHROME[1] and sx1 <= screen[0] and sy1 <= screen[1], (
            f"{path.stem}: {n.get('title', n['type'])} #{n['id']} opens at screen ({sx0:.0f},{sy0:.0f})-({sx1:.0f},{sy1:.0f}) of {screen}"
        )


@pytest.mark.parametrize("screen", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_template_fit_stays_readable(path: Path, screen: tuple[int, int]) -> None:
    boxes = [_box(n) for n in we.load_json(path)["nodes"]]
    width = max(b[2] for b in boxes) - min(b[0] for b in boxes)
    height = max(b[3] for b in boxes) - min(b[1] for b in boxes)
    fit = FIT_MARGIN * min(screen[0] / width, screen[1] / height)
    least = FIT_ZOOM_1366 if screen == (1366, 768) else MIN_ZOOM
    assert fit >= least, f"{path.stem}: the graph spans {width:.0f}x{height:.0f}; the template browser would fit it at {fit:.2f} in {screen}"


def test_card_titles_wrap_inside_the_card() -> None:
    """The card's title is drawn in lines that fit its width (the tiled-decode title ran off the card)."""
    from PIL import Image, ImageDraw

    from bonsai_tools.workflows import build, cards

    draw = ImageDraw.Draw(Image.new("RGB", (512, 512)))
    _big, mid, _small = cards.card_fonts()
    for stem, (builder, _variant) in build.WORKFLOWS.items():
        _nodes, title = builder()
        lines = cards.wrap(draw, title, mid)
        assert " ".join(lines) == title, (stem, lines)
        assert all(draw.textlength(line, font=mid) <= cards.TEXT_WIDTH for line in lines), (stem, lines)


@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_model_metadata_points_at_the_release_the_loaders_name(path: Path) -> None:
    ui = we.load_json(path)
    entries = ui.get("models", [])
    assert entries, f"{path.stem}: no workflow-level models list"
    per_node = [m for n in ui["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert per_node and all(m in entries for m in per_node), f"{path.stem}: node models must be listed at the workflow level too"
    repos = set()
    for m in entries:
        assert set(m) == {"name", "url", "directory"}, m
        assert m["directory"] == "bonsai", m
        match = HF.fullmatch(m["url"])
        assert match, f"{path.stem}: not a Hugging Face resolve URL of a Bonsai release: {m['url']}"
        assert m["name"] == f"{match.group(1)}/{match.group(2)}", f"{path.stem}: name {m['name']!r} is not <repo>/<path> of {m['url']}"
        repos.add(match.group(1))
    assert repos == _snapshot_folders(ui), f"{path.stem}: metadata repos {repos} vs loader folders {_snapshot_folders(ui)}"


def test_lora_names_are_called_placeholders() -> None:
    lora = [p for p in UI_FILES if any(n["type"] == "LoraLoaderModelOnly" for n in we.load_json(p)["nodes"])]
    assert lora, "no LoRA workflow shipped"
    for path in lora:
        ui = we.load_json(path)
        for n in (n for n in ui["nodes"] if n["type"] == "LoraLoaderModelOnly"):
            assert "placeholder" in n["widgets_values"][0], f"{path.stem}: LoRA name {n['widgets_values'][0]!r}"
            assert "placeholder" in n.get("title", "").lower(), f"{path.stem}: LoRA node title does not say placeholder"
        assert "placeholders" in _note(ui)["widgets_values"][0], f"{path.stem}: the note does not say the LoRA names are placeholders"


def test_template_category_is_named() -> None:
    tree = json.loads((REPO / "locales" / "en" / "main.json").read_text())
    names = tree["templateWorkflows"]["category"]
    assert names.get("bonsai-image") == "Bonsai Image", names  # the registry / Manager / README folder name


SEEDED = {"RandomNoise": 1, "BonsaiSampler": 1}  # node type -> index of its control_after_generate value in widgets_values


@pytest.mark.parametrize("path", UI_FILES, ids=_ids(UI_FILES))
def test_ui_seeds_randomize(path: Path) -> None:
    """A second Run makes a new image: the UI workflows' seeds are ``randomize`` (the API twins keep theirs fixed)."""
    ui = json.loads(path.read_text())
    seeded = [n for n in ui["nodes"] if n["type"] in SEEDED]
    assert seeded, f"{path.name}: no seeded node"
    for n in seeded:
        assert n["widgets_values"][SEEDED[n["type"]]] == "randomize", f"{path.name}: {n['type']} #{n['id']} seed control {n['widgets_values']}"
