"""Load the FLUX.2 VAE a Bonsai release ships as a diffusers folder into a stock ComfyUI ``VAE``.

A release's ``vae/`` is diffusers ``AutoencoderKLFlux2`` (``config.json`` +
``diffusion_pytorch_model.safetensors``). ComfyUI converts diffusers VAE keys itself
(``comfy.sd.VAE`` detects ``decoder.up_blocks.0.resnets.0.norm1.weight``), so this loader only
finds the folder, checks it so bad files fail with one clear message, and hands the state dict
to ``comfy.sd.VAE``. The result is the same object the stock ``VAELoader`` returns: VAEDecode,
VAEEncode and VAEDecodeTiled work unchanged.

Stock alternative: copy or link ``vae/diffusion_pytorch_model.safetensors`` into ``models/vae/``
under any name and pick it in the stock "Load VAE" node.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.safetensors_io import read_header
from ..bonsai_core.vae_fixture import FULL_BLOCK_OUT, LATENT_CHANNELS, VAE_CLASS_NAME, VAE_CONFIG_NAME, VAE_WEIGHTS_NAME, vae_tensor_shapes
from ._paths import name_problem

log = logging.getLogger(__name__)

BONSAI_FOLDER = "bonsai"  # models/bonsai/<repo-name>/ holds downloaded snapshots
VAE_SUBDIR = "vae"
# FLUX.2 latents as the DiT sees them: 32 VAE channels x 2x2 patch, 16x spatial reduction.
FLUX2_LATENT_CHANNELS = 4 * LATENT_CHANNELS
FLUX2_DOWNSCALE = 16
_LIST_DEPTH = 3  # <repo>/vae is depth 2; allow one grouping folder above a repo


def ensure_bonsai_folder() -> list[str]:
    """Register ``models/bonsai`` as a model folder (idempotent) and return all its roots.

    Roots added through ``extra_model_paths.yaml`` (key ``bonsai``) are kept.
    """
    folder_paths.add_model_folder_path(BONSAI_FOLDER, os.path.join(folder_paths.models_dir, BONSAI_FOLDER))
    return folder_paths.get_folder_paths(BONSAI_FOLDER)


def is_vae_dir(path: Path) -> bool:
    return (path / VAE_CONFIG_NAME).is_file() and (path / VAE_WEIGHTS_NAME).is_file()


def list_vae_folders() -> list[str]:
    """VAE folders under the ``bonsai`` roots, as '/'-separated paths relative to their root.

    A snapshot gives ``<repo-name>/vae``; a bare VAE folder dropped into ``models/bonsai/`` gives its name.
    """
    found: set[str] = set()
    for root in ensure_bonsai_folder():
        base = Path(root)
        if not base.is_dir():
            continue
        for dirpath, dirnames, _files in os.walk(base, followlinks=True):
            here = Path(dirpath)
            depth = len(here.relative_to(base).parts)
            if depth >= _LIST_DEPTH:
                dirnames.clear()
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if depth and is_vae_dir(here):
                found.add(here.relative_to(base).as_posix())
                dirnames.clear()  # a VAE folder holds no further VAEs
    return sorted(found)


def resolve_vae_folder(name: str) -> Path:
    """The absolute VAE folder for a name from :func:`list_vae_folders`, or an absolute folder path.

    A snapshot folder (holding ``vae/``) is accepted too, so the pipeline loader can pass its snapshot.
    """
    candidates = [Path(name)] if os.path.isabs(name) else [Path(root) / name for root in ensure_bonsai_folder()]
    for cand in candidates:
        for folder in (cand, cand / VAE_SUBDIR):
            if is_vae_dir(folder):
                return folder
    where = ", ".join(str(c) for c in candidates) or "(no bonsai model folder)"
    raise FileNotFoundError(f"no FLUX.2 VAE folder '{name}' ({VAE_CONFIG_NAME} + {VAE_WEIGHTS_NAME}) in {where}")


def read_vae_config(vae_dir: Path) -> dict[str, Any]:
    """Parse and check ``config.json``: it must describe a FLUX.2 VAE (AutoencoderKLFlux2, 32 latent channels, 2x2 patch)."""
    path = vae_dir / VAE_CONFIG_NAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BonsaiFormatError(path, None, f"cannot read the VAE config: {e}") from e
    if not isinstance(cfg, dict):
        raise BonsaiFormatError(path, None, "the VAE config is not a JSON object")
    cls = cfg.get("_class_name")
    if cls != VAE_CLASS_NAME:
        raise BonsaiFormatError(path, None, f"_class_name is {cls!r}, expected {VAE_CLASS_NAME!r} (the FLUX.2 VAE)")
    if int(cfg.get("latent_channels", -1)) != LATENT_CHANNELS:
        raise BonsaiFormatError(path, None, f"latent_channels is {cfg.get('latent_channels')!r}, the FLUX.2 VAE has {LATENT_CHANNELS}")
    if list(cfg.get("patch_size", [2, 2])) != [2, 2]:
        raise BonsaiFormatError(path, None, f"patch_size is {cfg.get('patch_size')!r}, the FLUX.2 VAE uses [2, 2]")
    return cfg


def check_vae_weights(weights: Path) -> None:
    """Check the safetensors header against the FLUX.2 VAE layout; one error names the first bad tensor.

    ComfyUI fixes the encoder width and infers only the decoder width (from ``decoder.conv_in.weight``),
    so every other shape follows from that one tensor.
    """
    entries, _meta = read_header(weights)
    conv_in = entries.get("decoder.conv_in.weight")
    if conv_in is None:
        raise BonsaiFormatError(weights, "decoder.conv_in.weight", "tensor is missing: not a diffusers FLUX.2 VAE")
    top = int(conv_in["shape"][0])
    if top % 4 or len(conv_in["shape"]) != 4:
        raise BonsaiFormatError(weights, "decoder.conv_in.weight", f"unexpected shape {conv_in['shape']}")
    c = top // 4
    expected = vae_tensor_shapes(FULL_BLOCK_OUT, (c, 2 * c, 4 * c, 4 * c))
    for name, shape in expected.items():
        if name not in entries:
            raise BonsaiFormatError(weights, name, "tensor is missing: not a complete diffusers FLUX.2 VAE")
        got = tuple(entries[name]["shape"])
        if got != shape:
            raise BonsaiFormatError(weights, name, f"shape {list(got)}, expected {list(shape)}")
    extra = sorted(set(entries) - set(expected))
    if extra:
        raise BonsaiFormatError(weights, extra[0], f"unexpected tensor ({len(extra)} unexpected in all): not a diffusers FLUX.2 VAE")


def load_flux2_vae(vae_dir: str | os.PathLike[str]) -> comfy.sd.VAE:
    """Load a diffusers FLUX.2 VAE folder into a stock ``comfy.sd.VAE`` (128 latent channels, 16x)."""
    vae_dir = Path(vae_dir)
    read_vae_config(vae_dir)
    weights = vae_dir / VAE_WEIGHTS_NAME
    if not weights.is_file():
        raise BonsaiFormatError(weights, None, "file not found")
    check_vae_weights(weights)
    sd, metadata = comfy.utils.load_torch_file(str(weights), return_metadata=True)
    vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    vae.throw_exception_if_invalid()
    if vae.latent_channels != FLUX2_LATENT_CHANNELS or vae.downscale_ratio != FLUX2_DOWNSCALE:
        raise BonsaiFormatError(
            weights,
            None,
            f"ComfyUI built a VAE with {vae.latent_channels} latent channels / {vae.downscale_ratio}x, expected FLUX.2's 128 / 16x",
        )
    # Same reload factory the stock VAELoader registers, so multi-GPU deep clones work for this VAE too.
    vae.patcher.cached_patcher_init = (comfy.sd.load_vae_patcher, (str(weights), metadata, None))
    log.info("Bonsai: loaded FLUX.2 VAE from %s", vae_dir)
    return vae


class BonsaiVAELoader(io.ComfyNode):
    """Pick a downloaded Bonsai snapshot's ``vae/`` folder and output a stock VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiVAELoader",
            display_name="Load Bonsai VAE (FLUX.2, diffusers folder)",
            category="loaders/bonsai",
            description="Loads the diffusers-format FLUX.2 VAE folder of a Bonsai Image release (models/bonsai/<repo>/vae) as a stock VAE.",
            inputs=[
                io.Combo.Input(
                    "vae_folder",
                    options=list_vae_folders(),
                    tooltip="A folder under models/bonsai holding config.json + diffusion_pytorch_model.safetensors.",
                )
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, vae_folder: str) -> bool | str:
        # Header checks at queue time give the precise message (this replaces the "not in list" check).
        problem = name_problem(vae_folder, "VAE folder", "models/bonsai")
        if problem is not None:
            return problem
        try:
            folder = resolve_vae_folder(vae_folder)
            read_vae_config(folder)
            check_vae_weights(folder / VAE_WEIGHTS_NAME)
        except (BonsaiFormatError, FileNotFoundError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, vae_folder: str) -> io.NodeOutput:
        return io.NodeOutput(load_flux2_vae(resolve_vae_folder(vae_folder)))


NODES: list[type[io.ComfyNode]] = [BonsaiVAELoader]
