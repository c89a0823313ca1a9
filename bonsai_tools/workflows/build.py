"""Generate the shipped workflows: UI JSON + thumbnail in ``workflows/``, API twin in ``workflows/api/``.

Run inside a ComfyUI checkout's environment (it reads the live node schemas, ours included)::

    ~/venv/bin/python -m bonsai_tools build-workflows [--comfyui ~/comfy/ComfyUI]

Each workflow is described once (:data:`WORKFLOWS`) and written in both formats by
:mod:`bonsai_tools.workflows.graph`, so the twins cannot drift. Thumbnails are descriptive cards drawn
with Pillow (title, model, size, node chain): a real render needs the 4B weights and a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import cards, content
from . import graph as wg

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "workflows"  # where the shipped workflows live
LOCALE = REPO / "locales" / "en" / "main.json"  # template titles (see write_locale)
# Folder names the pack gets: registry / Manager install (the registry id), the README's git route
# (same name), a plain `git clone` (the repository name) and the test harness link.
PACK_FOLDERS = ("bonsai-image", "bonsai-image-comfyui", "bonsai_image")

# Names the downloader produces: snapshots under models/bonsai/<repo>/, and the single-file
# (canonical) transformer that ``download --to-canonical`` writes next to them.
TERNARY_SNAPSHOT = content.gemlite_repo("ternary") + "/"
BINARY_SNAPSHOT = content.gemlite_repo("binary") + "/"
TERNARY_CANONICAL = "bonsai-image-ternary-4B.safetensors"
TERNARY_VAE = content.gemlite_repo("ternary") + "/vae"
TERNARY_TE = "bonsai/" + content.gemlite_repo("ternary") + "/text_encoder-hqq-4bit"
EDIT_INPUTS = ("bonsai_edit_input_1.png", "bonsai_edit_input_2.png")

T2I_PROMPT = "a bonsai tree on a wooden table by a window, soft morning light, detailed photograph"
EDIT_PROMPT = "turn the scene into a watercolor painting, keep the composition"
EDIT2_PROMPT = "place the object from image 1 into the scene of image 2, matching its lighting"

# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------
# The frontend fits a template's whole graph into the window at 75 % of the window
# (``fitToBounds``) and draws nodes as blank boxes below ~0.6 zoom (its low-detail threshold).
# Laptops still ship 1366x768 screens, so every graph fits ~1510 x 850 canvas units: fitted at
# ~0.65 there and ~0.9 at 1920x1080. Text to image uses four columns; the edit graphs put the
# reference blocks in a second row under the first three columns' short top row. The note is the
# first thing at the top left, the loaders right under it, and ``VIEW`` is the view restored when the
# file itself is opened (drag and drop, Open): the whole graph at 80 % in a 1366x768 window.
C1, C2, C3, C4 = 0, 430, 840, 1170  # note + loaders | prompt | sampling | sample, decode, save
COL = 300  # width of the sampling and output columns
LOADER_Y = 390  # below the note (0..340)
NOTE_SIZE = (400.0, 340.0)
ROW2_Y = 570  # edit graphs: the reference blocks, under the loader, prompt and sampling columns
BLOCK_W = 770  # one reference block: image | scale + encode | two ReferenceLatents
VIEW_OFFSET, VIEW_SCALE = (80.0, 90.0), 0.8  # clear of the left sidebar and the top bar


# ---------------------------------------------------------------------------
# graph pieces
# ---------------------------------------------------------------------------


def _loaders_pipeline(snapshot: str, variant: str) -> tuple[list, tuple, tuple, tuple]:
    n = wg.Node(
        1,
        "BonsaiPipelineLoader",
        {"snapshot": snapshot, "backend": "auto", "compute_dtype": "default"},
        pos=(C1, LOADER_Y),
        size=(400, 130),
        models=content.model_entries(variant),
    )
    return [n], (1, 0), (1, 1), (1, 2)


def _loaders_separate(canonical: str, te: str, vae_folder: str) -> tuple[list, tuple, tuple, tuple]:
    nodes = [
        wg.Node(
            1,
            "BonsaiModelLoader",
            {"model_name": canonical, "backend": "auto", "compute_dtype": "default", "graph_replay": "off"},
            pos=(C1, LOADER_Y),
            size=(400, 110),
        ),
        wg.Node(
            2,
            "BonsaiTextEncoderLoader",
            {"text_encoder": te},
            pos=(C1, LOADER_Y + 160),
            size=(400, 60),
            models=content.model_entries("ternary", ("text_encoder",)),
        ),
        wg.Node(
            3,
            "BonsaiVAELoader",
            {"vae_folder": vae_folder},
            pos=(C1, LOADER_Y + 270),
            size=(400, 60),
            models=content.model_entries("ternary", ("vae",)),
        ),
    ]
    return nodes, (1, 0), (2, 0), (3, 0)


def _sampling(model, positive, negative, width, height, seed: int, size_from: tuple | None = None) -> list:
    """CFGGuider(cfg 1) + euler + Flux2Scheduler(4 steps) + RandomNoise + EmptyFlux2LatentImage -> SamplerCustomAdvanced.

    Edit graphs (``size_from``) link width and height, so scheduler and latent are short: the column
    ends above the reference row, the latent under the prompt column."""
    if size_from is None:
        sched = wg.Node(20, "Flux2Scheduler", {"steps": 4, "width": width, "height": height}, pos=(C3, 490), size=(COL, 130))
        latent = wg.Node(21, "EmptyFlux2LatentImage", {"width": width, "height": height, "batch_size": 1}, pos=(C3, 680), size=(COL, 130))
    else:  # edit graphs take the output size from the (scaled) reference image
        sched = wg.Node(20, "Flux2Scheduler", {"steps": 4, "width": width, "height": height}, pos=(C3, 400), size=(COL, 80))
        latent = wg.Node(21, "EmptyFlux2LatentImage", {"width": width, "height": height, "batch_size": 1}, pos=(C2, 440), size=(380, 80))
        for n in (sched, latent):
            n.links["width"] = (size_from[0], 0)
            n.links["height"] = (size_from[0], 1)
    return [
        wg.Node(
            22, "CFGGuider", {"cfg": 1.0}, {"model": model, "positive": positive, "negative": negative}, pos=(C3, 150), size=(COL, 110)
        ),
        wg.Node(23, "KSamplerSelect", {"sampler_name": "euler"}, pos=(C3, 300), size=(COL, 70)),
        sched,
        latent,
        # randomize: a second Run makes a new image (the API twins keep the fixed seed the tests compare)
        wg.Node(24, "RandomNoise", {"noise_seed": seed}, pos=(C3, 0), size=(COL, 100), control="randomize"),
        wg.Node(
            25,
            "SamplerCustomAdvanced",
            {},
            {"noise": (24, 0), "guider": (22, 0), "sampler": (23, 0), "sigmas": (20, 0), "latent_image": (21, 0)},
            pos=(C4, 0),
            size=(COL, 160),
        ),
    ]


def _text(clip, prompt: str) -> list:
    return [
        wg.Node(10, "CLIPTextEncode", {"text": prompt}, {"clip": clip}, pos=(C2, 0), size=(380, 200), title="Prompt"),
        wg.Node(
            11,
            "ConditioningZeroOut",
            {},
            {"conditioning": (10, 0)},
            pos=(C2, 250),
            size=(380, 50),
            title="Negative (zeroed, distilled model)",
        ),
    ]


def _decode_save(vae, prefix: str, tiled: bool, save_h: int = 400) -> list:
    if tiled:
        dec = wg.Node(
            30,
            "VAEDecodeTiled",
            {"tile_size": 512, "overlap": 64, "temporal_size": 64, "temporal_overlap": 8},
            {"samples": (25, 0), "vae": vae},
            pos=(C4, 220),
            size=(COL, 160),
        )
        save_y = 440
    else:
        dec = wg.Node(30, "VAEDecode", {}, {"samples": (25, 0), "vae": vae}, pos=(C4, 220), size=(COL, 50))
        save_y = 310
    return [dec, wg.Node(31, "SaveImage", {"filename_prefix": prefix}, {"images": (30, 0)}, pos=(C4, save_y), size=(COL, save_h))]


def t2i(variant: str, size: int, *, tiled: bool = False, separate: bool = False, preset: bool = False) -> Callable:
    """Text to image; ``separate``: three loader nodes instead of the pipeline node; ``preset``: BonsaiSampler."""

    def build():
        snapshot = TERNARY_SNAPSHOT if variant == "ternary" else BINARY_SNAPSHOT
        if separate:
            nodes, model, clip, vae = _loaders_separate(TERNARY_CANONICAL, TERNARY_TE, TERNARY_VAE)
        else:
            nodes, model, clip, vae = _loaders_pipeline(snapshot, variant)
        if preset:
            # The recipe node builds the zeroed negative, scheduler, noise and latent itself.
            nodes.append(wg.Node(10, "CLIPTextEncode", {"text": T2I_PROMPT}, {"clip": clip}, pos=(C2, 0), size=(380, 200), title="Prompt"))
            nodes.append(
                wg.Node(
                    25,
                    "BonsaiSampler",
                    {"seed": 42, "width": size, "height": size, "batch_size": 1, "steps": 4},
                    {"model": model, "positive": (10, 0)},
                    pos=(C3, 0),
                    size=(COL, 220),
                    control="randomize",
                )
            )
        else:
            nodes += _text(clip, T2I_PROMPT)
            nodes += _sampling(model, (10, 0), (11, 0), size, size, seed=42)
        nodes += _decode_save(vae, f"bonsai/{variant}-{size}{'-tiled' if tiled else ''}", tiled)
        title = f"{variant} text to image {size}x{size}" + (" (tiled VAE decode)" if tiled else "")
        return nodes, title

    return build


def edit(refs: int) -> Callable:
    # Reference blocks in the second row: LoadImage | scale + encode | the two ReferenceLatents.
    blocks = [(C1 + i * BLOCK_W, ROW2_Y) for i in range(2)]

    def build():
        nodes, model, clip, vae = _loaders_pipeline(TERNARY_SNAPSHOT, "ternary")
        nodes += _text(clip, EDIT_PROMPT if refs == 1 else EDIT2_PROMPT)
        pos, neg = (10, 0), (11, 0)
        for i in range(refs):
            load, scale, enc, rp, rn = 40 + 5 * i, 41 + 5 * i, 42 + 5 * i, 43 + 5 * i, 44 + 5 * i
            x, y = blocks[i]
            nodes += [
                wg.Node(load, "LoadImage", {"image": EDIT_INPUTS[i]}, pos=(x, y), size=(240, 250), title=f"Reference image {i + 1}"),
                # 1 MP, sides a multiple of 16 (the FLUX.2 latent step), as the stock Klein edit template.
                wg.Node(
                    scale,
                    "ImageScaleToTotalPixels",
                    {"upscale_method": "nearest-exact", "megapixels": 1.0, "resolution_steps": 16},
                    {"image": (load, 0)},
                    pos=(x + 260, y),
                    size=(250, 110),
                ),
                wg.Node(enc, "VAEEncode", {}, {"pixels": (scale, 0), "vae": vae}, pos=(x + 260, y + 150), size=(250, 60)),
                wg.Node(
                    rp,
                    "ReferenceLatent",
                    {},
                    {"conditioning": pos, "latent": (enc, 0)},
                    pos=(x + 530, y),
                    size=(210, 60),
                    title=f"Reference {i + 1} (positive)",
                ),
                wg.Node(
                    rn,
                    "ReferenceLatent",
                    {},
                    {"conditioning": neg, "latent": (enc, 0)},
                    pos=(x + 530, y + 100),
                    size=(210, 60),
                    title=f"Reference {i + 1} (negative)",
                ),
            ]
            pos, neg = (rp, 0), (rn, 0)
        nodes.append(wg.Node(39, "GetImageSize", {}, {"image": (41, 0)}, pos=(C2, 340), size=(380, 60), title="Output size = reference 1"))
        nodes += _sampling(model, pos, neg, 1024, 1024, seed=42, size_from=(39,))
        # the output column ends above the second reference block (x from BLOCK_W on)
        nodes += _decode_save(vae, f"bonsai/edit-{refs}ref", tiled=False, save_h=400 if refs == 1 else 230)
        return nodes, f"image edit, {refs} reference image{'s' if refs > 1 else ''}"

    return build


# File stem -> (builder, variant). ComfyUI's template browser (frontend 1.47) shows a pack's
# template under its file stem and no other title (its i18n lookup covers only the core templates),
# so the stems are the titles: words and spaces, no "-" or "_" (the card's subtitle is the stem
# with those turned into spaces), short enough for a card (about 32 characters). The API twins in api/ carry the same names.
WORKFLOWS: dict[str, tuple[Callable, str]] = {
    "Bonsai ternary text to image 512": (t2i("ternary", 512), "ternary"),
    "Bonsai ternary 1024 three loaders": (t2i("ternary", 1024, separate=True), "ternary"),
    "Bonsai binary text to image 1024": (t2i("binary", 1024), "binary"),
    "Bonsai ternary edit 1 reference": (edit(1), "ternary"),
    "Bonsai ternary edit 2 references": (edit(2), "ternary"),
    "Bonsai Sampler 1024 tiled decode": (t2i("ternary", 1024, tiled=True, preset=True), "ternary"),
}


# ---------------------------------------------------------------------------
# ComfyUI in-process (schemas only, nothing runs)
# ---------------------------------------------------------------------------


def live_schemas(comfyui: Path) -> dict:
    """Schemas of every registered node, with this pack loaded as a custom node."""
    sys.path.insert(0, str(comfyui))
    os.chdir(comfyui)
    sys.argv = [str(comfyui / "main.py"), "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import nodes

    async def boot() -> None:
        await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
        if not await nodes.load_custom_node(str(REPO)):
            raise RuntimeError(f"ComfyUI could not load the pack at {REPO}")

    asyncio.run(boot())
    return {name: wg.NodeSchema.from_node_class(name, cls) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def graph_for(stem: str, nodes: list, note_text: str) -> wg.Graph:
    """The graph with its note at the top left, the restored view, and the workflow-level model list."""
    models: list[dict[str, str]] = []
    for n in nodes:
        models += [m for m in n.models if m not in models]
    return wg.Graph(
        stem,
        nodes,
        notes=[(note_text, (C1, 0), NOTE_SIZE)],
        ds_offset=VIEW_OFFSET,
        ds_scale=VIEW_SCALE,
        models=models,
    )


def write_workflow(graph: wg.Graph, schemas: dict, title: str, variant: str, out_dir: Path) -> Path:
    """UI file (checked against the live schemas), API twin and card for ``graph``."""
    ui = wg.to_ui(graph, schemas)
    # Model/image combos list what is installed on this machine; only structure must be clean here.
    problems = [p for p in wg.validate_ui(ui, schemas) if "is not one of the options" not in p]
    if problems:
        raise RuntimeError(f"{graph.name}: " + "; ".join(problems))
    write_json(out_dir / f"{graph.name}.json", ui)
    write_json(out_dir / "api" / f"{graph.name}.json", wg.to_api(graph))
    cards.thumbnail(out_dir / f"{graph.name}.jpg", title, variant, graph)
    return out_dir / f"{graph.name}.json"


def build_all(schemas: dict, out_dir: Path = HERE) -> list[Path]:
    written = []
    for stem, (builder, variant) in WORKFLOWS.items():
        nodes, title = builder()
        types = {n.type for n in nodes}
        text = content.note(title, variant, canonical="BonsaiModelLoader" in types, edit="LoadImage" in types)
        written.append(write_workflow(graph_for(stem, nodes, text), schemas, title, variant, out_dir))
    return written


def write_locale(path: Path = LOCALE) -> Path:
    """``locales/en/main.json``: "Bonsai Image" as the pack's category name in the template browser.

    ComfyUI serves every pack's ``locales/<lang>/main.json`` at ``/i18n``; the frontend names a pack's
    template category ``templateWorkflows.category.<pack folder>`` (falling back to the bare folder
    name). The key holds the pack's folder name, which depends on how it was installed, so the
    names of the documented routes are all written."""
    names = {folder.replace(".", "_"): "Bonsai Image" for folder in PACK_FOLDERS}  # the frontend's normalizeI18nKey
    write_json(path, {"templateWorkflows": {"category": names}})
    return path


def default_comfyui() -> Path:
    return Path(os.environ.get("COMFYUI_PATH", Path.home() / "comfy" / "ComfyUI"))


def cmd_build_workflows(args: argparse.Namespace) -> int:
    from .lora import build_lora

    schemas = live_schemas(args.comfyui.resolve())
    for p in [*build_all(schemas), build_lora(schemas)]:
        print(f"wrote {p.relative_to(REPO)} (+ .jpg, api/{p.name})")
    print(f"wrote {write_locale().relative_to(REPO)} (template category name)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-workflows", help="regenerate workflows/*.json, their API twins and thumbnails from live node schemas")
    p.add_argument("--comfyui", type=Path, default=default_comfyui(), help="ComfyUI checkout to read node schemas from")
    p.set_defaults(func=cmd_build_workflows)
