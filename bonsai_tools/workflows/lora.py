"""Generate the LoRA example workflow (UI JSON + thumbnail + API twin) with the shared builders.

Written by ``python -m bonsai_tools build-workflows`` together with the other workflows.

Two stock ``LoraLoaderModelOnly`` nodes chained after the Bonsai loader: LoRAs stay unmerged
branches on the packed layers (nodes/lora.py), each with its own strength.
"""

from __future__ import annotations

from pathlib import Path

from . import build as bw
from . import graph as wg

STEM = "bonsai_ternary_t2i_lora"
TITLE = "ternary text to image 1024x1024 + 2 LoRAs"
LORAS = ("klein4b_style_lora.safetensors", "klein4b_detail_lora.safetensors")

NOTE = (
    "## Bonsai Image 4B — LoRA\n\n"
    "Stock **LoraLoaderModelOnly** nodes work on the Bonsai MODEL with any FLUX.2 Klein 4B LoRA "
    "(BFL, diffusers or kohya keys). The LoRA is *not* merged into the binary/ternary weights "
    "(that would destroy it): it runs as a side branch, `y = Wq·x + strength·(alpha/rank)·B(A·x)`.\n\n"
    "- Put LoRA files in `models/loras/`; chain loaders to stack several, each with its own strength.\n"
    "- Changing a strength or bypassing a loader does not reload the model.\n"
    "- Cost: only the LoRA's own weights in memory, plus two thin matmuls per patched layer."
)


def build() -> tuple[list, str]:
    nodes, model, clip, vae = bw._loaders_pipeline(bw.TERNARY_SNAPSHOT)
    nodes += [
        wg.Node(
            5, "LoraLoaderModelOnly", {"lora_name": LORAS[0], "strength_model": 1.0}, {"model": model}, pos=(-420, 380), title="LoRA 1"
        ),
        wg.Node(
            6, "LoraLoaderModelOnly", {"lora_name": LORAS[1], "strength_model": 0.6}, {"model": (5, 0)}, pos=(-420, 500), title="LoRA 2"
        ),
    ]
    nodes += bw._text(clip, bw.T2I_PROMPT)
    nodes += bw._sampling((6, 0), (10, 0), (11, 0), 1024, 1024, seed=42)
    nodes += bw._decode_save(vae, "bonsai/ternary-1024-lora", tiled=False)
    return nodes, TITLE


def build_lora(schemas: dict, out_dir: Path = bw.HERE) -> Path:
    nodes, title = build()
    graph = wg.Graph(STEM, nodes, notes=[(NOTE, (-420, -220), (380, 300))])
    ui = wg.to_ui(graph, schemas)
    # Model/LoRA combos list what is installed on this machine; only structure must be clean here.
    problems = [p for p in wg.validate_ui(ui, schemas) if "is not one of the options" not in p]
    if problems:
        raise RuntimeError(f"{STEM}: " + "; ".join(problems))
    bw.write_json(out_dir / f"{STEM}.json", ui)
    bw.write_json(out_dir / "api" / f"{STEM}.json", wg.to_api(graph))
    bw.thumbnail(out_dir / f"{STEM}.jpg", title, "ternary", graph)
    return out_dir / f"{STEM}.json"
