"""Generate the LoRA example workflow (UI JSON + thumbnail + API twin) with the shared builders.

Written by ``python -m bonsai_tools build-workflows`` together with the other workflows.

Two stock ``LoraLoaderModelOnly`` nodes chained after the Bonsai loader: LoRAs stay unmerged
branches on the packed layers (nodes/lora.py), each with its own strength. The LoRA file names are
placeholders (no LoRA ships with the release): the note and the node titles say so.
"""

from __future__ import annotations

from pathlib import Path

from . import build as bw
from . import content
from . import graph as wg

STEM = "Bonsai ternary 1024 with LoRAs"  # the template title (see build.WORKFLOWS)
TITLE = "ternary text to image 1024x1024 + 2 LoRAs"
LORAS = ("placeholder_style_lora.safetensors", "placeholder_detail_lora.safetensors")

LORA_NOTE = (
    "Any FLUX.2 Klein 4B LoRA (BFL, diffusers or kohya keys) runs unmerged beside the packed weights; "
    "chain loaders to stack several. A new strength does not reload the model."
)


def build() -> tuple[list, str]:
    nodes, model, clip, vae = bw._loaders_pipeline(bw.TERNARY_SNAPSHOT, "ternary")
    y = bw.LOADER_Y + 180
    nodes += [
        wg.Node(
            5,
            "LoraLoaderModelOnly",
            {"lora_name": LORAS[0], "strength_model": 1.0},
            {"model": model},
            pos=(bw.C1, y),
            size=(400, 82),
            title="LoRA 1 (placeholder name: pick yours)",
        ),
        wg.Node(
            6,
            "LoraLoaderModelOnly",
            {"lora_name": LORAS[1], "strength_model": 0.6},
            {"model": (5, 0)},
            pos=(bw.C1, y + 130),
            size=(400, 82),
            title="LoRA 2 (placeholder name: pick yours)",
        ),
    ]
    nodes += bw._text(clip, bw.T2I_PROMPT)
    nodes += bw._sampling((6, 0), (10, 0), (11, 0), 1024, 1024, seed=42)
    nodes += bw._decode_save(vae, "bonsai/ternary-1024-lora", tiled=False)
    return nodes, TITLE


def build_lora(schemas: dict, out_dir: Path = bw.HERE) -> Path:
    nodes, title = build()
    text = content.note(title, "ternary", lora=True) + "\n\n" + LORA_NOTE
    return bw.write_workflow(bw.graph_for(STEM, nodes, text), schemas, title, "ternary", out_dir)
