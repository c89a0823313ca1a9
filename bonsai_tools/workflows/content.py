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
    """The Markdown note at the top of a workflow: what it needs, how to get it, how to run it.

    Short: the pack's notice script draws these notes at 12 px (the frontend's 10 px is ~6 px at the
    zoom a 1366x768 window fits a template at), and the note keeps its 400 x 340 box."""
    repo = gemlite_repo(variant)
    lines = [
        f"## Bonsai Image 4B — {title}",
        "",
        f"**Needs** `models/bonsai/{repo}/` ([{OWNER}/{repo}]({HUB}/{OWNER}/{repo}), "
        f"{'4.5' if variant == 'ternary' else '4.0'} GB).",
        "",
        f"**Get it**: the **{DOWNLOAD_NODE}** node (choose `{variant}`, Run), or with ComfyUI's Python "
        f"`{CLI.format(variant=variant)}`. Then press **R**.",
    ]
    if canonical:
        lines += ["", f"The model loader reads `bonsai-image-{variant}-4B.safetensors`: add `--to-canonical` to the command."]
    if edit:
        lines += ["", "Upload your pictures in the **Reference image** nodes; the output takes reference 1's size."]
    if lora:
        lines += ["", "The LoRA names are **placeholders**: put your LoRAs in `models/loras/` and pick them (or bypass: Ctrl+B)."]
    lines += ["", "4 steps, cfg 1, euler (distilled). On a Mac: release `mlx`, then pick the `-mlx-` folder."]
    return "\n".join(lines)
