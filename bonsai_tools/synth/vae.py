"""Synthetic FLUX.2 VAE folders in the exact released ``vae/`` layout (names and shapes from
:mod:`bonsai_core.vae`), with random weights so the VAE loader is tested without downloads.

``size="full"`` is the released geometry. ``size="tiny"`` keeps the same 251 keys and the
full-width encoder but narrows the decoder: ComfyUI's ``VAE`` hard-codes the FLUX.2 encoder width
and infers only the decoder width from ``decoder.conv_in.weight``, so the encoder cannot shrink,
the decoder can.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bonsai_core.atomic import atomic_path
from bonsai_core.safetensors_io import TensorSpec, write_safetensors
from bonsai_core.vae import RELEASED_VAE_CONFIG, VAE_BLOCK_OUT, VAE_CONFIG_NAME, VAE_WEIGHTS_NAME, vae_tensor_shapes

TINY_DECODER_BLOCK_OUT = (32, 64, 128, 128)
VAE_SIZES = ("tiny", "full")


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights scaled so activations neither explode nor vanish through ~30 convs.

    Norm gains near 1 and small biases keep each block near unit variance; convs and linears get
    1/sqrt(fan_in) scaling. The decoder's last conv is amplified so the decoded image has visible
    structure (the tests check the output is not blank).
    """
    if name == "bn.num_batches_tracked":
        return torch.tensor(0, dtype=torch.int64)
    if name == "bn.running_var":
        return (0.5 + torch.rand(shape, generator=gen)).to(torch.bfloat16)
    if name == "bn.running_mean":
        return (0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(part in name for part in ("norm1.", "norm2.", "group_norm.", "conv_norm_out."))
    if is_norm and leaf == "weight":
        t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
    elif leaf == "bias":
        t = 0.02 * torch.randn(shape, generator=gen)
    else:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        t = torch.randn(shape, generator=gen) / fan_in**0.5
        if name == "decoder.conv_out.weight":
            t = t * 1.5
    return t.to(torch.bfloat16)


def vae_fixture_config(size: str) -> dict[str, Any]:
    """The ``config.json`` a fixture of this size carries."""
    if size not in VAE_SIZES:
        raise ValueError(f"unknown VAE fixture size {size!r}; expected one of {VAE_SIZES}")
    cfg = dict(RELEASED_VAE_CONFIG)
    if size == "tiny":
        # Not a released key: records the narrowed decoder so the folder stays self-describing.
        cfg["decoder_block_out_channels"] = list(TINY_DECODER_BLOCK_OUT)
    return cfg


def make_vae_fixture(size: str, seed: int, out_dir: str | os.PathLike[str]) -> Path:
    """Write a random FLUX.2 VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    ``size`` is ``"tiny"`` (full encoder, narrow decoder: ~70 MB) or ``"full"`` (the released
    geometry, ~168 MB). Deterministic for a given ``seed``. Returns ``out_dir``.
    """
    cfg = vae_fixture_config(size)
    dec = TINY_DECODER_BLOCK_OUT if size == "tiny" else None
    shapes = vae_tensor_shapes(VAE_BLOCK_OUT, dec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    # The generator is consumed in file order, so produce() must run in spec order (write_safetensors does).
    specs = [
        TensorSpec(
            name,
            torch.int64 if name == "bn.num_batches_tracked" else torch.bfloat16,
            shape,
            lambda name=name, shape=shape: _random_tensor(name, shape, gen),
        )
        for name, shape in shapes.items()
    ]
    write_safetensors(out / VAE_WEIGHTS_NAME, specs, metadata={"format": "pt"})
    with atomic_path(out / VAE_CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out
