"""Bonsai Download Model: fetch a released Bonsai Image 4B repo from inside ComfyUI (``bonsai_core.download``).

Files go to the first registered ``bonsai`` folder (``models/bonsai/<repo-name>/``, or the
``bonsai:`` folder of ``extra_model_paths.yaml``), verified against the Hub's sizes and hashes;
the folder is chosen by the same function as the command line's. ComfyUI's progress bar shows the
bytes; "Cancel" stops the transfer (completed files are kept, the next run continues).

Failures (offline, not found, disk full, a stalled Hub) end the node with one message that says
what to fetch from where into which folder. ComfyUI shows an exception's type as
``module.QualName``; a custom node's module name is its folder path with dots mangled, so the
node raises :class:`BonsaiDownloadError`, whose module is set to a short readable name.
"""

from __future__ import annotations

import os

import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..bonsai_core.download import DownloadError, download
from ..bonsai_core.download.errors import manual_steps
from ..bonsai_core.download.hub_names import (
    AUTO_RELEASE,
    COMPONENTS,
    OWNER,
    RELEASES,
    VARIANT_BITS,
    needed_description,
    repo_name,
    resolve_release,
)
from ..bonsai_core.download.models_dir import BONSAI_FOLDER, ModelsLocation, resolve_models_location
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escaping_logger
from . import folders

log = escaping_logger(__name__)

_UNIT = 1 << 10  # progress in KiB: fine-grained for small files, ints the UI handles for 3 GB
CATEGORY = "Bonsai Image"


class BonsaiDownloadError(Exception):
    """A download that could not complete; the message holds the manual steps."""


# Shown by ComfyUI as "bonsai_image.BonsaiDownloadError" instead of "<path_x_to>.nodes.download.BonsaiDownloadError".
BonsaiDownloadError.__module__ = "bonsai_image"


def _bits_words() -> str:
    """"ternary = 2-bit, binary = 1-bit", from the one table of variant bits."""
    return ", ".join(f"{v} = {b}-bit" for v, b in sorted(VARIANT_BITS.items(), reverse=True))


def models_location() -> ModelsLocation:
    """Where the node writes: ComfyUI's own ``bonsai`` folders (``models/bonsai`` registered idempotently)."""
    folders.register()  # the loaders' one registration of models/bonsai
    return resolve_models_location(registered=folder_paths.get_folder_paths(BONSAI_FOLDER), comfy_models_dir=folder_paths.models_dir)


def _components(text_encoder: bool, vae: bool) -> tuple[str, ...]:
    return tuple(c for c, on in zip(COMPONENTS, (True, text_encoder, vae)) if on)


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


class BonsaiDownloadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiDownloadModel",
            display_name="Bonsai Download Model",
            category=CATEGORY,
            search_aliases=["download bonsai", "hugging face", "bonsai image 4b"],
            description=(
                "Downloads prism-ml/bonsai-image-<variant>-4B-<release> from Hugging Face into models/bonsai/ and verifies every file. "
                "Refresh the browser (R) afterwards so the loaders list it."
            ),
            inputs=[
                io.Combo.Input("variant", options=sorted(VARIANT_BITS), default="ternary", tooltip=_bits_words()),
                io.Combo.Input(
                    "release",
                    options=["auto", *RELEASES],
                    default="auto",
                    tooltip=(
                        f"auto = {AUTO_RELEASE}: the folders every shipped workflow loads, on CUDA, CPU and Apple alike. "
                        f"gemlite and mlx (Apple's packed format): the transformer at the variant's bits ({_bits_words()}), "
                        "the text encoder 4-bit; unpacked: bf16 weights throughout (7.75 GB transformer, bf16 text encoder)"
                    ),
                ),
                io.Boolean.Input(
                    "text_encoder",
                    default=True,
                    tooltip="also download the Qwen3 text encoder: 4-bit in the gemlite (HQQ) and mlx releases, bf16 in unpacked",
                ),
                io.Boolean.Input("vae", default=True, tooltip="also download the VAE"),
                io.Boolean.Input(
                    "to_canonical",
                    default=False,
                    tooltip="also write models/bonsai/bonsai-image-<variant>-4B.safetensors (one file, listed by Bonsai Load Model)",
                ),
            ],
            outputs=[io.String.Output(display_name="snapshot_dir")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, release: str | None) -> bool | str:
        # One input only: ComfyUI repeats a validation message once per input this method takes.
        # Cheap checks only: validation runs while the prompt is queued, so no network here.
        if release is None:
            return True  # arrives through a link: known only at execution, where download() checks it
        chosen = resolve_release(release) if release in ("auto", *RELEASES) else None
        if chosen is None:
            return f"must be one of auto, {', '.join(RELEASES)}, got {release!r}"
        bonsai = models_location().bonsai_dir
        if _offline_mode():
            steps = " Or: ".join(
                manual_steps(f"{OWNER}/{repo_name(v, chosen)}", bonsai / repo_name(v, chosen), needed_description(chosen, COMPONENTS, v))
                for v in sorted(VARIANT_BITS)
            )
            return f"HF_HUB_OFFLINE is set, so nothing can be downloaded. {steps}"
        existing = next((p for p in (bonsai, *bonsai.parents) if p.exists()), None)
        if existing is not None and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            return f"{existing} is not a writable folder, so nothing can be saved in {bonsai}"
        return True

    @classmethod
    def execute(cls, variant: str, release: str, text_encoder: bool, vae: bool, to_canonical: bool) -> io.NodeOutput:
        components = _components(text_encoder, vae)
        where = models_location()
        bar: comfy.utils.ProgressBar | None = None

        def progress(done: int, total: int, name: str) -> None:
            nonlocal bar
            if bar is None:
                bar = comfy.utils.ProgressBar(max(1, total // _UNIT))
            # update_absolute also checks for ComfyUI's interrupt, which aborts the transfer
            bar.update_absolute(done // _UNIT, max(1, total // _UNIT))

        try:
            chosen = resolve_release(release)
            name = repo_name(variant, chosen)
        except ValueError as e:  # a linked value that validation could not see
            raise BonsaiDownloadError(str(e)) from None
        log.info("Bonsai download: %s/%s -> %s", OWNER, name, where.describe())
        try:
            result = download(
                variant, chosen, components=components, to_canonical=to_canonical, progress=progress, bonsai_dir=where.bonsai_dir
            )
        except DownloadError as e:
            log.error("Bonsai download failed (%s): %s", e.kind, e)
            # "from None": the cause is already in the message, and ComfyUI's report shows only this exception
            raise BonsaiDownloadError(str(e)) from None
        except BonsaiFormatError as e:  # the --to-canonical conversion refused the downloaded transformer
            raise BonsaiDownloadError(str(e)) from None
        log.info("Bonsai download complete: %s (%d files, %.2f GB)", result.local_dir, len(result.files), result.total_bytes / 1e9)
        return io.NodeOutput(str(result.local_dir))


__all__ = ["BonsaiDownloadError", "BonsaiDownloadModel", "models_location"]

NODES = [BonsaiDownloadModel]
