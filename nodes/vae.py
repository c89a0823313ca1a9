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

import os
from pathlib import Path
from typing import Any

import comfy.sd
from comfy_api.latest import io

from ..bonsai_core.bounded import read_json_object
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.packing import check_dense_values
from ..bonsai_core.safetensors_io import SafetensorsReader, read_header
from ..bonsai_core.vae import (
    FLUX2_DOWNSCALE,
    FLUX2_LATENT_CHANNELS,
    VAE_BLOCK_OUT,
    VAE_CLASS_NAME,
    VAE_CONFIG_NAME,
    VAE_FOLDER,
    VAE_LATENT_CHANNELS,
    VAE_WEIGHTS_NAME,
    vae_tensor_shapes,
)
from . import folders, installed

log = escaping_logger(__name__)

CATEGORY = "Bonsai Image"
VAE_SUBDIR = VAE_FOLDER
_LIST_DEPTH = 3  # <repo>/vae is depth 2; allow one grouping folder above a repo
WHAT = "VAE folder"


def is_vae_dir(path: Path) -> bool:
    """A FLUX.2 VAE folder: its config says ``AutoencoderKLFlux2`` and the weights file is there (cached, never raises).

    A release's ``transformer/`` has the same two file names, so the config is what tells them apart."""
    return folders.is_ok("vae-config", path, _vae_listing_problem)


def _vae_listing_problem(path: Path) -> str | None:
    read_vae_config(path)
    weights = path / VAE_WEIGHTS_NAME
    if not weights.is_file():
        return f"{weights}: file not found"
    return None


def list_vae_folders() -> list[str]:
    """FLUX.2 VAE folders under the ``bonsai`` roots, as '/'-separated paths relative to their root.

    A snapshot gives ``<repo-name>/vae``; a bare VAE folder dropped into ``models/bonsai/`` gives its name."""
    found: set[str] = set()
    for root in folders.roots(folders.BONSAI):
        for e in installed.walk(root, _LIST_DEPTH, descend=lambda e: not is_vae_dir(e.path)):
            # a part of a release whose download was interrupted is not offered: the release is not ready
            if e.is_dir and is_vae_dir(e.path) and not installed.is_interrupted(e.path):
                found.add(e.rel)
    return sorted(found)


def resolve_vae_folder(name: object) -> Path:
    """The VAE folder of a listed name (``<repo>/vae``), or of a snapshot name (its ``vae/``).

    ``ValueError`` for names outside ``models/bonsai``; ``FileNotFoundError`` (one line, with how to get
    the release) when no folder with a VAE config is there."""
    rel = folders.guard(name, WHAT, "models/bonsai").rstrip("/")
    for sub in ("", VAE_SUBDIR):
        cand = folders.find((folders.BONSAI,), f"{rel}/{sub}" if sub else rel, want_dir=True)
        # A folder with a config is returned even when the config is wrong: validation then says what is wrong with it.
        if cand is not None and (cand / VAE_CONFIG_NAME).is_file():
            return cand
    raise FileNotFoundError(folders.missing(name, WHAT, (folders.BONSAI,)))


def read_vae_config(vae_dir: Path) -> dict[str, Any]:
    """Parse and check ``config.json``: it must describe a FLUX.2 VAE (AutoencoderKLFlux2, 32 latent channels, 2x2 patch)."""
    path = vae_dir / VAE_CONFIG_NAME
    cfg = read_json_object(path)  # bounded: regular file, size cap, strict JSON; BonsaiFormatError names the file
    assert cfg is not None
    cls = cfg.get("_class_name")
    if cls != VAE_CLASS_NAME:
        raise BonsaiFormatError(path, None, f"_class_name is {cls!r}, expected {VAE_CLASS_NAME!r} (the FLUX.2 VAE)")
    if cfg.get("latent_channels") != VAE_LATENT_CHANNELS:
        raise BonsaiFormatError(path, None, f"latent_channels is {cfg.get('latent_channels')!r}, the FLUX.2 VAE has {VAE_LATENT_CHANNELS}")
    if cfg.get("patch_size", [2, 2]) != [2, 2]:
        raise BonsaiFormatError(path, None, f"patch_size is {cfg.get('patch_size')!r}, the FLUX.2 VAE uses [2, 2]")
    return cfg


def check_vae_weights(weights: Path, entries: dict[str, dict[str, Any]] | None = None) -> None:
    """Check the safetensors header (``entries``, or read from ``weights``) against the FLUX.2 VAE
    layout; one error names the first bad tensor.

    ComfyUI fixes the encoder width and infers only the decoder width (from ``decoder.conv_in.weight``),
    so every other shape follows from that one tensor.
    """
    if entries is None:
        entries, _meta = read_header(weights)
    conv_in = entries.get("decoder.conv_in.weight")
    if conv_in is None:
        raise BonsaiFormatError(weights, "decoder.conv_in.weight", "tensor is missing: not a diffusers FLUX.2 VAE")
    top = int(conv_in["shape"][0]) if conv_in["shape"] else 0  # a 0-d entry must not raise IndexError
    if top % 4 or top == 0 or len(conv_in["shape"]) != 4:
        raise BonsaiFormatError(weights, "decoder.conv_in.weight", f"unexpected shape {conv_in['shape']}")
    c = top // 4
    expected = vae_tensor_shapes(VAE_BLOCK_OUT, (c, 2 * c, 4 * c, 4 * c))
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
    # One open: the header checked is the file read; every weight is finite or refused by name
    # (a NaN in the decoder would otherwise render a black image with "success").
    with SafetensorsReader(weights, mmap=True) as reader:
        check_vae_weights(weights, reader.entries)
        sd = {key: check_dense_values(reader.get(key), weights, key) for key in reader.keys()}
        metadata = dict(reader.metadata) or None  # what ComfyUI's loader passes: None without metadata
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
            display_name="Bonsai Load VAE",
            category=CATEGORY,
            description="Loads the diffusers-format FLUX.2 VAE folder of a Bonsai Image release (models/bonsai/<repo>/vae) as a stock VAE.",
            search_aliases=["bonsai", "flux2 vae", "vae loader"],
            inputs=[
                io.Combo.Input(
                    "vae_folder",
                    options=folders.cached_listing("vaes", (folders.BONSAI,), list_vae_folders, []),
                    tooltip=f"A folder under models/bonsai holding a FLUX.2 {VAE_CONFIG_NAME} + {VAE_WEIGHTS_NAME}. Empty? {folders.models_hint()}.",
                )
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, vae_folder: str | None) -> bool | str:
        # Header checks at queue time give one precise line (this replaces the "not in list" check).
        if vae_folder is None:
            return True  # linked: ComfyUI passes None at queue time; execute resolves and guards the real value
        try:
            folder = resolve_vae_folder(vae_folder)
        except ValueError as e:
            return str(e)
        except FileNotFoundError as e:
            return installed.not_found(str(e), vae_folder, (folders.BONSAI,), list_vae_folders())
        problem = folders.check("vae-header", folder, _vae_problem)
        return True if problem is None else installed.with_resume(problem, folder)

    @classmethod
    def execute(cls, vae_folder: str) -> io.NodeOutput:
        # Resolved (and guarded) again here: a name arriving through a link never reached validate_inputs.
        return io.NodeOutput(load_flux2_vae(resolve_vae_folder(vae_folder)))


def _vae_problem(folder: Path) -> str | None:
    read_vae_config(folder)
    check_vae_weights(folder / VAE_WEIGHTS_NAME)
    return None


NODES: list[type[io.ComfyNode]] = [BonsaiVAELoader]

folders.prewarm_listing("vaes", (folders.BONSAI,), list_vae_folders)
