"""Synthetic release snapshots: what ``huggingface_hub.snapshot_download`` leaves on disk.

A Bonsai release folder holds the packed transformer, the text encoder and the FLUX.2 VAE side by
side (plus the diffusers pipeline files)::

    bonsai-image-ternary-4B-gemlite-2bit/          bonsai-image-binary-4B-mlx-1bit/
      model_index.json                               model_index.json
      manifest.json                                  manifest.json
      transformer-gemlite-int2/                      scheduler/scheduler_config.json
        state_dict.pt, config.json,                  tokenizer/...
        quantization_config.json                     transformer-packed-mflux/
      text_encoder-hqq-4bit/                           diffusion_pytorch_model.safetensors, ...
        config.json, qmodel.pt, tokenizer/...        text_encoder-mlx-4bit/
      vae/                                             config.json, model.safetensors, tokenizer files
        config.json,                                 vae/
        diffusion_pytorch_model.safetensors            config.json, diffusion_pytorch_model.safetensors

The unpacked releases are plain diffusers ``Flux2KleinPipeline`` folders: bf16 ``transformer/``,
sharded bf16 ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``.

Every piece is written by its synthetic writer (:mod:`.transformer` through the runtime's own
format writers, :mod:`.text_encoder`, :mod:`.vae`), and every name comes from the runtime (repo
names from the downloader, pack folder names from the format writers, text-encoder folders from
the text-encoder readers), so a synthetic release exercises exactly the readers a download does.
``size="tiny"`` pairs ``KLEIN_TINY`` (context 384) with the tiny Qwen3 (hidden 128, 3 x 128 = 384).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bonsai_core.atomic import atomic_path
from bonsai_core.download.hub_names import OWNER, RELEASES, repo_name
from bonsai_core.klein import GROUP_SIZE
from bonsai_core.te_formats import LAYOUTS as TE_LAYOUTS
from bonsai_core.te_formats import TE_FOLDER_NAMES
from bonsai_core.vae import VAE_FOLDER

from .files import write_json, write_tokenizer
from .text_encoder import TE_CONFIGS, make_te_fixture, write_dense_te
from .transformer import make_fixture
from .vae import make_vae_fixture

SNAPSHOT_LAYOUTS: tuple[str, ...] = RELEASES
# The 4-bit text encoder each packed release carries; the unpacked release has a bf16 one.
_TE_FORMAT = {"gemlite": "hqq", "mlx": "mlx"}
_TE_FOLDER = dict(zip(TE_LAYOUTS, TE_FOLDER_NAMES))

# diffusers' Flux2KleinPipeline declaration; its keys are also the component folder names.
_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "Flux2KleinPipeline",
    "is_distilled": True,
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3ForCausalLM"],
    "tokenizer": ["transformers", "Qwen2TokenizerFast"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}

_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def snapshot_repo_name(variant: str, layout: str) -> str:
    """The Hugging Face repo (and local folder) name of a release, e.g. ``bonsai-image-ternary-4B-gemlite-2bit``."""
    return repo_name(variant, layout)


def make_release(
    variant: str,
    layout: str,
    target: str | os.PathLike[str],
    *,
    size: str = "tiny",
    seed: int = 0,
    tokenizer_src: str | os.PathLike[str] | None = None,
    vae_size: str | None = None,
) -> Path:
    """Write ``target`` (a new folder) as a complete release of ``variant`` in ``layout`` (gemlite, mlx, unpacked).

    ``size`` is the transformer and text-encoder geometry (``tiny`` or ``full``); ``vae_size`` the
    VAE's (default: ``tiny`` with a tiny model, ``full`` otherwise). ``tokenizer_src``: a Qwen
    tokenizer folder shipped beside the text encoder, as the releases do (e.g. ComfyUI's
    ``comfy/text_encoders/qwen25_tokenizer``). The folder is built beside ``target`` and renamed
    into place, so a failed build leaves nothing behind; an existing ``target`` is refused.
    """
    if layout not in SNAPSHOT_LAYOUTS:
        raise ValueError(f"a release snapshot is one of {', '.join(SNAPSHOT_LAYOUTS)}, not {layout!r}")
    if size not in TE_CONFIGS:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(TE_CONFIGS)}")
    name = snapshot_repo_name(variant, layout)  # also checks the variant
    with atomic_path(target) as tmp:
        # The transformer goes first: its writer creates the (new) snapshot root with the pack folder
        # inside, as every runtime writer refuses to write into an existing folder.
        make_fixture(variant, size, layout, seed, tmp)
        if layout == "unpacked":
            write_dense_te(TE_CONFIGS[size], seed, tmp / "text_encoder")
        else:
            te_format = _TE_FORMAT[layout]
            make_te_fixture(te_format, size, seed, tmp / _TE_FOLDER[te_format], tokenizer_src=tokenizer_src)
        make_vae_fixture(vae_size or ("tiny" if size == "tiny" else "full"), seed, tmp / VAE_FOLDER)
        write_json(tmp / "model_index.json", _MODEL_INDEX)
        write_json(
            tmp / "manifest.json", {"model_version": f"{variant} g{GROUP_SIZE} (synthetic fixture, seed {seed})", "repo": f"{OWNER}/{name}"}
        )
        if layout in ("mlx", "unpacked"):
            # These releases also carry the diffusers scheduler and a top-level tokenizer.
            write_json(tmp / "scheduler" / "scheduler_config.json", _SCHEDULER_CONFIG)
            if tokenizer_src is not None:
                write_tokenizer(tokenizer_src, tmp / "tokenizer")
    return Path(target)


def make_snapshot_fixture(
    variant: str,
    layout: str,
    out_root: str | os.PathLike[str],
    *,
    size: str = "tiny",
    seed: int = 0,
    tokenizer_src: str | os.PathLike[str] | None = None,
    vae_size: str | None = None,
) -> Path:
    """:func:`make_release` into ``out_root/<repo name>/``, where the downloader puts a release; returns that folder."""
    target = Path(out_root) / snapshot_repo_name(variant, layout)
    return make_release(variant, layout, target, size=size, seed=seed, tokenizer_src=tokenizer_src, vae_size=vae_size)
