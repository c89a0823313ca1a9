"""What a shipped workflow tells its user: the instruction note and the model download metadata.

Two kinds of model metadata go into each UI file (the ComfyUI frontend's own format, one entry =
``{"name", "url", "directory"}``, ``url`` required):

* the workflow-level ``models`` list: every weight file of the Hugging Face release the graph's
  loaders point at, named relative to ``models/bonsai`` (``<repo>/<component>/<file>``) with its
  ``resolve/main`` URL, so a reader or a tool sees what to fetch and where it goes;
* ``properties.models`` on a loader node, for the same files.

The frontend only flags a *widget value* that looks like a model file (``.safetensors``, ``.pt``...)
and is absent from the widget's list. Snapshot-folder values (``<repo>/``) are not flagged by it, so
the note at the top of the graph is what says, on open, which folder is needed and how to get it.
"""

from __future__ import annotations

from bonsai_core.download.hub_names import OWNER, VARIANT_BITS, repo_name
from bonsai_core.download.models_dir import BONSAI_FOLDER

HUB = "https://huggingface.co"
BONSAI_DIR = BONSAI_FOLDER  # models/bonsai: where the downloader writes a release, one folder per repo
DOWNLOAD_NODE = "Bonsai Download Model"  # display name of the pack's Download node
CLI = "python custom_nodes/bonsai-image/bonsai.py download {variant}"  # registry install folder = registry id


def gemlite_repo(variant: str) -> str:
    """Repo (and ``models/bonsai`` folder) name of the gemlite release the workflows load."""
    return repo_name(variant, "gemlite")


def release_files(variant: str) -> list[tuple[str, str]]:
    """(component, path inside the repo) of the gemlite release's weight files."""
    return [
        ("transformer", f"transformer-gemlite-int{VARIANT_BITS[variant]}/state_dict.pt"),
        ("text_encoder", "text_encoder-hqq-4bit/qmodel.pt"),
        ("vae", "vae/diffusion_pytorch_model.safetensors"),
    ]


def model_entries(variant: str, components: tuple[str, ...] = ("transformer", "text_encoder", "vae")) -> list[dict[str, str]]:
    """Frontend model entries for the release's weight files of ``components``."""
    repo = gemlite_repo(variant)
    return [
        {"name": f"{repo}/{path}", "url": f"{HUB}/{OWNER}/{repo}/resolve/main/{path}", "directory": BONSAI_DIR}
        for comp, path in release_files(variant)
        if comp in components
    ]


def note(title: str, variant: str, *, canonical: bool = False, edit: bool = False, lora: bool = False) -> str:
    """The Markdown note at the top of a workflow: what it needs, how to get it, how to run it."""
    repo = gemlite_repo(variant)
    lines = [
        f"## Bonsai Image 4B — {title}",
        "",
        f"**Needs** `models/bonsai/{repo}/` (Hugging Face [{OWNER}/{repo}]({HUB}/{OWNER}/{repo}), about "
        f"{'4.5' if variant == 'ternary' else '4.0'} GB). A loader showing a name that is not in its list means "
        "the folder is not there yet.",
        "",
        f"**Get it**: add the **{DOWNLOAD_NODE}** node (double-click the canvas and type *Bonsai Download*), "
        f"choose `{variant}`, press Run. Or in a shell, with ComfyUI's Python: "
        f"`{CLI.format(variant=variant)}`. Then press **R** to refresh the lists.",
    ]
    if canonical:
        lines += [
            "",
            f"This graph uses the three separate loaders. The model loader reads the single-file model "
            f"`bonsai-image-{variant}-4B.safetensors`: add `--to-canonical` to the command above to write it "
            f"next to the release in `models/bonsai/`.",
        ]
    if edit:
        lines += ["", "Upload your own pictures in the **Reference image** nodes; the output takes the size of reference 1."]
    if lora:
        lines += [
            "",
            "The two LoRA names are **placeholders**: put your FLUX.2 Klein 4B LoRA files in `models/loras/` "
            "and pick them in the LoRA nodes (or bypass a node with Ctrl+B).",
        ]
    lines += [
        "",
        "Recipe: 4 steps, cfg 1, euler, Flux2Scheduler (distilled model). "
        "On a Mac, download with release `mlx` and pick the `-mlx-` folder in the loader.",
    ]
    return "\n".join(lines)
