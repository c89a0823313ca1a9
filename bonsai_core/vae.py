"""The FLUX.2 VAE as every Bonsai release ships it: file names, config, latent geometry, tensor shapes.

A release's ``vae/`` folder is the standard diffusers ``AutoencoderKLFlux2``: ``config.json`` +
``diffusion_pytorch_model.safetensors`` with 251 tensors (250 bf16 + the int64
``bn.num_batches_tracked``, 84,046,115 parameters). The loader validates a folder against these
facts before ComfyUI builds the model; the synthetic-release generator writes folders from them.

Two channel counts matter and are easy to confuse:

* :data:`VAE_LATENT_CHANNELS` (32): channels of the VAE's own latent, one per pixel of the 8x
  downscaled image;
* :data:`FLUX2_LATENT_CHANNELS` (128): what the FLUX.2 transformer and ComfyUI's ``LATENT`` carry,
  the VAE latent folded by a 2x2 patch (4 x 32), so one latent pixel covers 16x16 image pixels
  (:data:`FLUX2_DOWNSCALE`).
"""

from __future__ import annotations

from typing import Any

VAE_FOLDER = "vae"  # the component folder inside a release snapshot
VAE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
VAE_CONFIG_NAME = "config.json"
VAE_CLASS_NAME = "AutoencoderKLFlux2"
VAE_LATENT_CHANNELS = 32
VAE_PATCH = 2  # the latent is folded 2x2 before the transformer sees it
FLUX2_LATENT_CHANNELS = VAE_PATCH * VAE_PATCH * VAE_LATENT_CHANNELS
FLUX2_DOWNSCALE = 16  # image pixels per latent pixel, per side (8x VAE x 2x patch)
VAE_BLOCK_OUT = (128, 256, 512, 512)  # encoder (and released decoder) widths

# The released vae/config.json of every FLUX.2 (Klein) pipeline.
RELEASED_VAE_CONFIG: dict[str, Any] = {
    "_class_name": VAE_CLASS_NAME,
    "act_fn": "silu",
    "batch_norm_eps": 0.0001,
    "batch_norm_momentum": 0.1,
    "block_out_channels": list(VAE_BLOCK_OUT),
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": VAE_LATENT_CHANNELS,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "patch_size": [VAE_PATCH, VAE_PATCH],
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
    block_out_channels: tuple[int, ...] = VAE_BLOCK_OUT,
    decoder_block_out_channels: tuple[int, ...] | None = None,
    latent_channels: int = VAE_LATENT_CHANNELS,
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
    out["bn.running_mean"] = (VAE_PATCH * VAE_PATCH * latent_channels,)
    out["bn.running_var"] = (VAE_PATCH * VAE_PATCH * latent_channels,)
    out["bn.num_batches_tracked"] = ()
    return out
