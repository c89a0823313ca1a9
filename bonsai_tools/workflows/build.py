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

from . import graph as wg

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "workflows"  # where the shipped workflows live

# Names the downloader produces (bonsai_core/download.py): snapshots under models/bonsai/<repo>/,
# converted canonical transformers in models/diffusion_models/.
TERNARY_SNAPSHOT = "bonsai-image-ternary-4B-gemlite-2bit/"
BINARY_SNAPSHOT = "bonsai-image-binary-4B-gemlite-1bit/"
TERNARY_CANONICAL = "bonsai-image-ternary-4B.safetensors"
TERNARY_VAE = "bonsai-image-ternary-4B-gemlite-2bit/vae"
TERNARY_TE = "bonsai/bonsai-image-ternary-4B-gemlite-2bit/text_encoder-hqq-4bit"
EDIT_INPUTS = ("bonsai_edit_input_1.png", "bonsai_edit_input_2.png")

T2I_PROMPT = "a bonsai tree on a wooden table by a window, soft morning light, detailed photograph"
EDIT_PROMPT = "turn the scene into a watercolor painting, keep the composition"
EDIT2_PROMPT = "place the object from image 1 into the scene of image 2, matching its lighting"


# ---------------------------------------------------------------------------
# graph pieces
# ---------------------------------------------------------------------------


def _loaders_pipeline(snapshot: str) -> tuple[list, tuple, tuple, tuple]:
    n = wg.Node(
        1, "BonsaiPipelineLoader", {"snapshot": snapshot, "backend": "auto", "compute_dtype": "default"}, pos=(-420, 200), size=(380, 130)
    )
    return [n], (1, 0), (1, 1), (1, 2)


def _loaders_separate(canonical: str, te: str, vae_folder: str) -> tuple[list, tuple, tuple, tuple]:
    nodes = [
        wg.Node(
            1,
            "BonsaiModelLoader",
            {"model_name": canonical, "backend": "auto", "compute_dtype": "default"},
            pos=(-420, 120),
            size=(380, 110),
        ),
        wg.Node(2, "BonsaiTextEncoderLoader", {"text_encoder": te}, pos=(-420, 270), size=(380, 60)),
        wg.Node(3, "BonsaiVAELoader", {"vae_folder": vae_folder}, pos=(-420, 370), size=(380, 60)),
    ]
    return nodes, (1, 0), (2, 0), (3, 0)


def _sampling(model, positive, negative, width, height, seed: int, size_from: tuple | None = None) -> list:
    """CFGGuider(cfg 1) + euler + Flux2Scheduler(4 steps) + RandomNoise + EmptyFlux2LatentImage -> SamplerCustomAdvanced."""
    sched = wg.Node(20, "Flux2Scheduler", {"steps": 4, "width": width, "height": height}, pos=(420, 420))
    latent = wg.Node(21, "EmptyFlux2LatentImage", {"width": width, "height": height, "batch_size": 1}, pos=(420, 560))
    if size_from is not None:  # edit graphs take the output size from the (scaled) reference image
        for n in (sched, latent):
            n.links["width"] = (size_from[0], 0)
            n.links["height"] = (size_from[0], 1)
    return [
        wg.Node(22, "CFGGuider", {"cfg": 1.0}, {"model": model, "positive": positive, "negative": negative}, pos=(420, 120)),
        wg.Node(23, "KSamplerSelect", {"sampler_name": "euler"}, pos=(420, 300)),
        sched,
        latent,
        wg.Node(24, "RandomNoise", {"noise_seed": seed}, pos=(420, 20)),
        wg.Node(
            25,
            "SamplerCustomAdvanced",
            {},
            {"noise": (24, 0), "guider": (22, 0), "sampler": (23, 0), "sigmas": (20, 0), "latent_image": (21, 0)},
            pos=(780, 120),
        ),
    ]


def _text(clip, prompt: str) -> list:
    return [
        wg.Node(10, "CLIPTextEncode", {"text": prompt}, {"clip": clip}, pos=(0, 120), size=(380, 180), title="Prompt"),
        wg.Node(11, "ConditioningZeroOut", {}, {"conditioning": (10, 0)}, pos=(0, 360), title="Negative (zeroed, distilled model)"),
    ]


def _decode_save(vae, prefix: str, tiled: bool) -> list:
    if tiled:
        dec = wg.Node(
            30,
            "VAEDecodeTiled",
            {"tile_size": 512, "overlap": 64, "temporal_size": 64, "temporal_overlap": 8},
            {"samples": (25, 0), "vae": vae},
            pos=(1080, 120),
        )
    else:
        dec = wg.Node(30, "VAEDecode", {}, {"samples": (25, 0), "vae": vae}, pos=(1080, 120))
    return [dec, wg.Node(31, "SaveImage", {"filename_prefix": prefix}, {"images": (30, 0)}, pos=(1340, 120), size=(420, 460))]


NOTE_T2I = (
    "## Bonsai Image 4B — {title}\n\n"
    "Distilled FLUX.2 Klein 4B with {variant} weights: **4 steps, cfg 1, euler, Flux2Scheduler**.\n\n"
    "Models: `python -m bonsai_core download {variant}` puts the release in `models/bonsai/<repo>/` "
    "(gemlite on CUDA, mlx on Apple silicon, unpacked elsewhere); pick that folder in the loader. "
    "Packed weights stay packed in memory."
)


def t2i(variant: str, size: int, *, tiled: bool = False, separate: bool = False, preset: bool = False) -> Callable:
    """Text to image; ``separate``: three loader nodes instead of the pipeline node; ``preset``: BonsaiSampler."""

    def build():
        snapshot = TERNARY_SNAPSHOT if variant == "ternary" else BINARY_SNAPSHOT
        if separate:
            nodes, model, clip, vae = _loaders_separate(TERNARY_CANONICAL, TERNARY_TE, TERNARY_VAE)
        else:
            nodes, model, clip, vae = _loaders_pipeline(snapshot)
        if preset:
            # The recipe node builds the zeroed negative, scheduler, noise and latent itself.
            nodes.append(wg.Node(10, "CLIPTextEncode", {"text": T2I_PROMPT}, {"clip": clip}, pos=(0, 120), size=(380, 180), title="Prompt"))
            nodes.append(
                wg.Node(
                    25,
                    "BonsaiSampler",
                    {"seed": 42, "width": size, "height": size, "batch_size": 1, "steps": 4},
                    {"model": model, "positive": (10, 0)},
                    pos=(420, 120),
                    size=(320, 220),
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
    def build():
        nodes, model, clip, vae = _loaders_pipeline(TERNARY_SNAPSHOT)
        nodes += _text(clip, EDIT_PROMPT if refs == 1 else EDIT2_PROMPT)
        pos, neg = (10, 0), (11, 0)
        for i in range(refs):
            load, scale, enc, rp, rn = 40 + 5 * i, 41 + 5 * i, 42 + 5 * i, 43 + 5 * i, 44 + 5 * i
            y = 700 + 380 * i
            nodes += [
                wg.Node(load, "LoadImage", {"image": EDIT_INPUTS[i]}, pos=(-420, y), size=(320, 340), title=f"Reference image {i + 1}"),
                # 1 MP, sides a multiple of 16 (the FLUX.2 latent step), as the stock Klein edit template.
                wg.Node(
                    scale,
                    "ImageScaleToTotalPixels",
                    {"upscale_method": "nearest-exact", "megapixels": 1.0, "resolution_steps": 16},
                    {"image": (load, 0)},
                    pos=(-60, y),
                ),
                wg.Node(enc, "VAEEncode", {}, {"pixels": (scale, 0), "vae": vae}, pos=(260, y)),
                wg.Node(
                    rp,
                    "ReferenceLatent",
                    {},
                    {"conditioning": pos, "latent": (enc, 0)},
                    pos=(260, y + 100),
                    title=f"Reference {i + 1} (positive)",
                ),
                wg.Node(
                    rn,
                    "ReferenceLatent",
                    {},
                    {"conditioning": neg, "latent": (enc, 0)},
                    pos=(260, y + 200),
                    title=f"Reference {i + 1} (negative)",
                ),
            ]
            pos, neg = (rp, 0), (rn, 0)
        nodes.append(wg.Node(39, "GetImageSize", {}, {"image": (41, 0)}, pos=(-60, 560), title="Output size = reference 1"))
        nodes += _sampling(model, pos, neg, 1024, 1024, seed=42, size_from=(39,))
        nodes += _decode_save(vae, f"bonsai/edit-{refs}ref", tiled=False)
        return nodes, f"image edit, {refs} reference image{'s' if refs > 1 else ''}"

    return build


# file stem -> (builder, variant label for the card)
WORKFLOWS: dict[str, tuple[Callable, str]] = {
    "bonsai_ternary_t2i_512": (t2i("ternary", 512), "ternary"),
    "bonsai_ternary_t2i_1024": (t2i("ternary", 1024, separate=True), "ternary"),
    "bonsai_binary_t2i_1024": (t2i("binary", 1024), "binary"),
    "bonsai_ternary_edit_1ref": (edit(1), "ternary"),
    "bonsai_ternary_edit_2ref": (edit(2), "ternary"),
    "bonsai_ternary_t2i_1024_tiled_vae": (t2i("ternary", 1024, tiled=True, preset=True), "ternary"),
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


def thumbnail(path: Path, title: str, variant: str, graph) -> None:
    """A 512x512 descriptive card (JPEG): title, variant, output size and the node chain."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (512, 512), (24, 32, 28))
    d = ImageDraw.Draw(img)
    try:
        big = ImageFont.truetype("DejaVuSans-Bold.ttf", 34)
        mid = ImageFont.truetype("DejaVuSans.ttf", 22)
        small = ImageFont.truetype("DejaVuSans.ttf", 16)
    except OSError:
        big = mid = small = ImageFont.load_default()
    accent = (120, 200, 120) if variant == "ternary" else (120, 170, 230)
    d.rectangle((0, 0, 512, 10), fill=accent)
    # A stylised bonsai: pot, trunk, three canopy discs.
    d.rectangle((206, 420, 306, 470), fill=(120, 80, 60))
    d.polygon([(250, 420), (262, 420), (268, 330), (244, 330)], fill=(90, 60, 40))
    for cx, cy, r in ((256, 300, 60), (196, 330, 40), (316, 330, 40)):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent)
    d.text((24, 28), "Bonsai Image 4B", font=big, fill=(235, 235, 235))
    d.text((24, 76), title, font=mid, fill=accent)
    types = [n.type for n in graph.nodes]
    chain = " > ".join(dict.fromkeys(t for t in types if t not in ("KSamplerSelect", "RandomNoise", "ConditioningZeroOut")))
    y = 120
    line = ""
    for word in chain.split(" "):
        if d.textlength(line + " " + word, font=small) > 464:
            d.text((24, y), line.strip(), font=small, fill=(190, 190, 190))
            y += 22
            line = ""
        line += " " + word
    d.text((24, y), line.strip(), font=small, fill=(190, 190, 190))
    tmp = path.with_suffix(".jpg.partial")
    img.save(tmp, "JPEG", quality=88)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def build_all(schemas: dict, out_dir: Path = HERE) -> list[Path]:
    written = []
    for stem, (builder, variant) in WORKFLOWS.items():
        nodes, title = builder()
        note = NOTE_T2I.format(title=title, variant=variant)
        if any(n.type == "BonsaiModelLoader" for n in nodes):
            note += (
                "\n\nThis graph uses the three loader nodes; the model loader reads the canonical file "
                f"`models/diffusion_models/bonsai-image-{variant}-4B.safetensors` (`download {variant} --to-canonical`)."
            )
        if any(n.type == "LoadImage" for n in nodes):
            note += "\n\nUpload your own picture(s) in the *Reference image* node(s); the output takes the size of reference 1."
        graph = wg.Graph(stem, nodes, notes=[(note, (-420, -260), (380, 300))])
        ui = wg.to_ui(graph, schemas)
        problems = wg.validate_ui(ui, {k: v for k, v in schemas.items()})
        # Model/image combos list what is installed on this machine; only structure must be clean here.
        problems = [p for p in problems if "is not one of the options" not in p]
        if problems:
            raise RuntimeError(f"{stem}: " + "; ".join(problems))
        write_json(out_dir / f"{stem}.json", ui)
        write_json(out_dir / "api" / f"{stem}.json", wg.to_api(graph))
        thumbnail(out_dir / f"{stem}.jpg", title, variant, graph)
        written.append(out_dir / f"{stem}.json")
    return written


def default_comfyui() -> Path:
    return Path(os.environ.get("COMFYUI_PATH", Path.home() / "comfy" / "ComfyUI"))


def cmd_build_workflows(args: argparse.Namespace) -> int:
    from .lora import build_lora

    schemas = live_schemas(args.comfyui.resolve())
    for p in [*build_all(schemas), build_lora(schemas)]:
        print(f"wrote {p.relative_to(REPO)} (+ .jpg, api/{p.name})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-workflows", help="regenerate workflows/*.json, their API twins and thumbnails from live node schemas")
    p.add_argument("--comfyui", type=Path, default=default_comfyui(), help="ComfyUI checkout to read node schemas from")
    p.set_defaults(func=cmd_build_workflows)
