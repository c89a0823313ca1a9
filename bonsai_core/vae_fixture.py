"""Synthetic FLUX.2 VAE folders in the exact diffusers ``AutoencoderKLFlux2`` layout.

Every Bonsai release ships the standard FLUX.2 VAE as ``vae/config.json`` +
``vae/diffusion_pytorch_model.safetensors`` (251 tensors: 250 bf16 + the int64
``bn.num_batches_tracked``, 84,046,115 parameters). The fixtures here reproduce that key set
with random weights so the loader can be tested without downloading anything.

``size="full"`` is the released geometry. ``size="tiny"`` keeps the same 251 keys and the
full-width encoder but narrows the decoder: ComfyUI (``comfy/sd.py`` ``VAE.__init__``) hard-codes
the encoder width (``ch=128``) and infers only the decoder width from
``decoder.conv_in.weight``, so the encoder cannot shrink, the decoder can.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .safetensors_io import TensorSpec, write_safetensors

VAE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
VAE_CONFIG_NAME = "config.json"
VAE_CLASS_NAME = "AutoencoderKLFlux2"
LATENT_CHANNELS = 32  # per 2x2 patch; the DiT sees 4 x 32 = 128 channels
FULL_BLOCK_OUT = (128, 256, 512, 512)
TINY_DECODER_BLOCK_OUT = (32, 64, 128, 128)
VAE_SIZES = ("tiny", "full")

# The released vae/config.json of every FLUX.2 (Klein) pipeline.
RELEASED_VAE_CONFIG: dict[str, Any] = {
    "_class_name": VAE_CLASS_NAME,
    "act_fn": "silu",
    "batch_norm_eps": 0.0001,
    "batch_norm_momentum": 0.1,
    "block_out_channels": list(FULL_BLOCK_OUT),
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "patch_size": [2, 2],
    "sample_size": 1024,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}


def _resnet(out: dict[str, tuple[int, ...]], prefix: str, cin: int, cout: int) -> None:
    out[f"{prefix}.norm1.weight"] = (cin,)
    out[f"{prefix}.norm1.bias"] = (cin,)
    out[f"{prefix}.conv1.weight"] = (cout, cin, 3, 3)
    out[f"{prefix}.conv1.bias"] = (cout,)
    out[f"{prefix}.norm2.weight"] = (cout,)
    out[f"{prefix}.norm2.bias"] = (cout,)
    out[f"{prefix}.conv2.weight"] = (cout, cout, 3, 3)
    out[f"{prefix}.conv2.bias"] = (cout,)
    if cin != cout:
        out[f"{prefix}.conv_shortcut.weight"] = (cout, cin, 1, 1)
        out[f"{prefix}.conv_shortcut.bias"] = (cout,)


def _mid_block(out: dict[str, tuple[int, ...]], prefix: str, ch: int) -> None:
    _resnet(out, f"{prefix}.resnets.0", ch, ch)
    att = f"{prefix}.attentions.0"
    out[f"{att}.group_norm.weight"] = (ch,)
    out[f"{att}.group_norm.bias"] = (ch,)
    # diffusers stores the mid-block attention as Linear [out, in]; ComfyUI reshapes it to 1x1 convs.
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        out[f"{att}.{proj}.weight"] = (ch, ch)
        out[f"{att}.{proj}.bias"] = (ch,)
    _resnet(out, f"{prefix}.resnets.1", ch, ch)


def vae_tensor_shapes(
    block_out_channels: tuple[int, ...] = FULL_BLOCK_OUT,
    decoder_block_out_channels: tuple[int, ...] | None = None,
    latent_channels: int = LATENT_CHANNELS,
    layers_per_block: int = 2,
) -> dict[str, tuple[int, ...]]:
    """Every tensor of a diffusers ``AutoencoderKLFlux2`` state dict -> shape, in module order."""
    dec_ch = tuple(decoder_block_out_channels or block_out_channels)
    out: dict[str, tuple[int, ...]] = {}
    # Encoder: conv_in, down blocks (downsample on all but the last), mid block, norm + conv_out (2 x latent).
    out["encoder.conv_in.weight"] = (block_out_channels[0], 3, 3, 3)
    out["encoder.conv_in.bias"] = (block_out_channels[0],)
    cin = block_out_channels[0]
    for i, cout in enumerate(block_out_channels):
        for j in range(layers_per_block):
            _resnet(out, f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(block_out_channels) - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv.bias"] = (cout,)
        cin = cout
    top = block_out_channels[-1]
    _mid_block(out, "encoder.mid_block", top)
    out["encoder.conv_norm_out.weight"] = (top,)
    out["encoder.conv_norm_out.bias"] = (top,)
    out["encoder.conv_out.weight"] = (2 * latent_channels, top, 3, 3)
    out["encoder.conv_out.bias"] = (2 * latent_channels,)
    # Decoder: conv_in, mid block, up blocks in reversed width order (layers_per_block + 1 resnets).
    rev = tuple(reversed(dec_ch))
    out["decoder.conv_in.weight"] = (rev[0], latent_channels, 3, 3)
    out["decoder.conv_in.bias"] = (rev[0],)
    _mid_block(out, "decoder.mid_block", rev[0])
    cin = rev[0]
    for i, cout in enumerate(rev):
        for j in range(layers_per_block + 1):
            _resnet(out, f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(rev) - 1:
            out[f"decoder.up_blocks.{i}.upsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            out[f"decoder.up_blocks.{i}.upsamplers.0.conv.bias"] = (cout,)
        cin = cout
    out["decoder.conv_norm_out.weight"] = (dec_ch[0],)
    out["decoder.conv_norm_out.bias"] = (dec_ch[0],)
    out["decoder.conv_out.weight"] = (3, dec_ch[0], 3, 3)
    out["decoder.conv_out.bias"] = (3,)
    out["quant_conv.weight"] = (2 * latent_channels, 2 * latent_channels, 1, 1)
    out["quant_conv.bias"] = (2 * latent_channels,)
    out["post_quant_conv.weight"] = (latent_channels, latent_channels, 1, 1)
    out["post_quant_conv.bias"] = (latent_channels,)
    # Latent BatchNorm over the 2x2-patchified latent (affine=False: running stats only).
    out["bn.running_mean"] = (4 * latent_channels,)
    out["bn.running_var"] = (4 * latent_channels,)
    out["bn.num_batches_tracked"] = ()
    return out


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
    shapes = vae_tensor_shapes(FULL_BLOCK_OUT, dec)
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
