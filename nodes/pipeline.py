"""``BonsaiPipelineLoader``: one released Bonsai snapshot folder -> MODEL, CLIP, VAE.

A downloaded release (``models/bonsai/<repo-name>/``) holds everything a FLUX.2 Klein graph
needs: the packed transformer (``transformer-gemlite-int*/``, ``transformer-packed-mflux/`` or
``transformer/``), the Qwen3 text encoder (4-bit ``text_encoder-hqq-4bit/`` or
``text_encoder-mlx-4bit/``; bf16 ``text_encoder/`` in the unpacked releases) and the FLUX.2 VAE
(``vae/``). This node calls the three loaders' own functions on that folder, so the outputs are
exactly what the separate loader nodes give: stock MODEL / CLIP / VAE for CLIPTextEncode,
CFGGuider, SamplerCustomAdvanced, VAEDecode, LoRA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.model_patcher
import comfy.sd
from comfy_api.latest import io

from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.te_formats import TE_FOLDER_NAMES, resolve_te_folder
from . import folders, installed, model_loader, model_sources, text_encoder, vae
from .text_encoder import dense_te_folder  # with the TE node, which lists and loads the same folders

log = escaping_logger("bonsai_image.pipeline")

CATEGORY = "Bonsai Image"
WHAT = "snapshot folder"
_NO_TE = "the snapshot has no text encoder folder (text_encoder-hqq-4bit/, text_encoder-mlx-4bit/ or text_encoder/)"
_NO_VAE = "the snapshot has no FLUX.2 VAE (vae/config.json + vae/diffusion_pytorch_model.safetensors)"


def _incomplete(path: Path, what: str) -> str:
    """One line for a snapshot missing a part (e.g. a transformer-only download), with how to complete it."""
    return f"{path}: {what}; the whole release has it: {folders.models_hint()}"


def find_text_encoder(folder: Path) -> Path | None:
    """The snapshot's text encoder folder: bf16 ``text_encoder/`` (unpacked) or ``text_encoder-*-4bit/``, or None."""
    dense = dense_te_folder(folder)
    if dense is not None:
        return dense
    try:
        te = resolve_te_folder(folder)
    except BonsaiFormatError:
        return None
    return te if te != folder and text_encoder.is_te_folder(te) else None  # a bare TE folder is not a snapshot


def _is_pipeline_snapshot(folder: Path) -> bool:
    """A snapshot the pipeline can load: a transformer pack (model loader lists it) plus a VAE and a text encoder."""
    return vae.is_vae_dir(folder / vae.VAE_SUBDIR) and find_text_encoder(folder) is not None


def list_snapshots() -> list[str]:
    """Snapshot folders (model loader names, ending with ``/``) that hold a transformer, a text encoder and a VAE."""
    out = []
    for name in model_sources.bonsai_entries():
        if not name.endswith(model_sources.SNAPSHOT_MARK):
            continue
        folder = folders.find((folders.BONSAI,), name.rstrip("/"), want_dir=True)
        if folder is not None and folders.is_ok("pipeline-parts", folder, _parts_problem) and not installed.is_interrupted(folder):
            out.append(name)
    return out


def resolve_snapshot(name: object) -> Path:
    """The folder of a snapshot name under ``models/bonsai``: ``ValueError`` when refused, ``FileNotFoundError`` when absent."""
    return folders.locate((folders.BONSAI,), name, WHAT, want_dir=True)


def _parts_problem(folder: Path) -> str | None:
    vae_dir = folder / vae.VAE_SUBDIR
    if not vae.is_vae_dir(vae_dir):
        return _incomplete(folder, _NO_VAE)
    if find_text_encoder(folder) is None:
        return _incomplete(folder, _NO_TE)
    return None


def _pipeline_problem(folder: Path) -> str | None:
    # Header-level checks of all three parts, the cheap ones (VAE, text encoder) before the transformer.
    vae_dir = folder / vae.VAE_SUBDIR
    if not (vae_dir / vae.VAE_CONFIG_NAME).is_file():
        return _incomplete(folder, _NO_VAE)
    vae.read_vae_config(vae_dir)
    vae.check_vae_weights(vae_dir / vae.VAE_WEIGHTS_NAME)
    if find_text_encoder(folder) is None:
        # a text encoder folder that is there but does not load (a truncated file) says why, not "no text encoder"
        present = [folder / n for n in (*TE_FOLDER_NAMES, text_encoder.DENSE_TE_FOLDER) if (folder / n / "config.json").is_file()]
        problems = [p for p in map(text_encoder.te_folder_problem, present) if p]
        return problems[0] if problems else _incomplete(folder, _NO_TE)
    return model_sources.describe_problem(folder)


def _canonical_file(name: object) -> Path | None:
    """The canonical file a snapshot name names (a common mix-up: Load Model's file picked here)."""
    if not isinstance(name, str) or name.endswith("/"):
        return None
    path = folders.find(model_sources.FILE_KINDS, name, want_dir=False)
    return path if path is not None and model_sources.is_canonical_file(path) else None


def validation_problem(name: object) -> str | None:
    try:
        folder = resolve_snapshot(name)
    except ValueError as e:
        return str(e)
    except FileNotFoundError as e:
        if _canonical_file(name) is not None:
            return (
                f"{name!r} is a canonical transformer file (no text encoder or VAE in it): load it with Bonsai Load Model, "
                "and the text encoder and VAE with Bonsai Load Text Encoder and Bonsai Load VAE; here, pick a release folder (ending in /)"
            )
        return installed.not_found(str(e), name, (folders.BONSAI,), list_snapshots())
    problem = folders.check("pipeline", folder, _pipeline_problem)
    return installed.with_resume(problem, folder) if problem is not None else None


def load_pipeline(
    snapshot: str | Path, backend: str = "auto", compute_dtype: str = "default"
) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE from one snapshot folder (a path, or a name under ``models/bonsai``, guarded)."""
    folder = snapshot if isinstance(snapshot, Path) and snapshot.is_absolute() else resolve_snapshot(str(snapshot))
    if not folder.is_dir():
        raise BonsaiFormatError(folder, None, "not a snapshot folder")
    vae_dir = folder / vae.VAE_SUBDIR
    if not vae.is_vae_dir(vae_dir):
        raise BonsaiFormatError(vae_dir, None, f"the snapshot has no FLUX.2 VAE ({vae.VAE_CONFIG_NAME} + {vae.VAE_WEIGHTS_NAME})")
    te_dir = find_text_encoder(folder)
    if te_dir is None:
        raise BonsaiFormatError(folder, None, _NO_TE)
    # Header-only VAE checks first: a broken vae/ should fail before the transformer is loaded.
    vae.read_vae_config(vae_dir)
    vae.check_vae_weights(vae_dir / vae.VAE_WEIGHTS_NAME)
    model = model_loader.load_bonsai_model(folder, backend, compute_dtype)
    clip = text_encoder.load_clip(te_dir)  # the same path as the TE loader node: bf16 text_encoder/ dense, 4-bit packed
    vae_obj = vae.load_flux2_vae(vae_dir)
    log.info("Bonsai pipeline loaded from %s (text encoder %s)", folder, te_dir.name)
    return model, clip, vae_obj


class BonsaiPipelineLoader(io.ComfyNode):
    """The whole release in one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiPipelineLoader",
            display_name="Bonsai Load Pipeline",
            category=CATEGORY,
            description="Loads a downloaded Bonsai Image release folder (models/bonsai/<repo>/) as MODEL, CLIP and VAE.",
            search_aliases=["bonsai", "flux2 klein", "checkpoint loader", "pipeline", "snapshot"],
            inputs=[
                io.Combo.Input(
                    "snapshot",
                    options=folders.cached_listing("snapshots", (folders.BONSAI,), list_snapshots, []),
                    tooltip=f"A release folder under models/bonsai with transformer, text encoder and vae. Empty? {folders.models_hint()}.",
                ),
                io.Combo.Input(
                    "backend",
                    options=model_loader.backend_choices(),
                    default="auto",
                    tooltip="Low-bit matmul kernel; auto picks the fastest that runs here (the load log names it).",
                ),
                io.Combo.Input(
                    "compute_dtype",
                    options=list(model_loader.COMPUTE_DTYPES),
                    default="default",
                    tooltip="Activation dtype of the transformer.",
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, snapshot: str | None) -> bool | str:
        # Replaces ComfyUI's "value not in list" check with one precise line at queue time: refused or missing
        # name (and how to get the release), or the first bad part (VAE header, text encoder, transformer header).
        if snapshot is None:
            return True  # linked: ComfyUI passes None at queue time; execute resolves and guards the real value
        problem = validation_problem(snapshot)
        return True if problem is None else problem

    @classmethod
    def fingerprint_inputs(cls, snapshot: str, backend: str, compute_dtype: str) -> Any:
        # A re-downloaded snapshot under the same name must reload.
        try:
            fp = folders.fingerprint(resolve_snapshot(snapshot))
        except (ValueError, OSError):
            return None  # execute raises the precise error
        return (snapshot, fp, backend, compute_dtype)

    @classmethod
    def execute(cls, snapshot: str, backend: str, compute_dtype: str) -> io.NodeOutput:
        # Resolved (and guarded) here: a name arriving through a link never reached validate_inputs.
        return io.NodeOutput(*load_pipeline(resolve_snapshot(snapshot), backend, compute_dtype))


NODES: list[type[io.ComfyNode]] = [BonsaiPipelineLoader]

folders.prewarm_listing("snapshots", (folders.BONSAI,), list_snapshots)
