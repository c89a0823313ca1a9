"""Synthetic tiny Bonsai models and synthetic LoRAs in every FLUX.2 key format ComfyUI accepts."""

from __future__ import annotations

import torch

from bonsai_core.klein import (
    KLEIN_TINY,
    KleinConfig,
    bfl_dense_tensors,
    bfl_quantized_layers,
    diffusers_dense_tensors,
    diffusers_quantized_linears,
)
from bonsai_core.packing import GROUP_SIZE, MAX_CODE, dequantize, pack_codes

CFG = KLEIN_TINY


def quantized_shapes(cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """BFL key (``...qkv.weight``) -> (out, in) of every packed layer."""
    ql = diffusers_quantized_linears(cfg)
    return {bk: (sum(ql[m][0] for m in mods), ql[mods[0]][1]) for bk, mods in bfl_quantized_layers(cfg).items()}


def tiny_model_state_dicts(bits: int = 1, seed: int = 0, cfg: KleinConfig = CFG) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(canonical Bonsai state dict, the same model dequantized to dense bf16), BFL keys, no prefix.

    Scales are small powers of two times 1..8/8, so every dequantized value is exact in bf16 and
    the dense reference model holds exactly the Bonsai weights.
    """
    g = torch.Generator().manual_seed(seed)
    packed: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for key, (n, k) in quantized_shapes(cfg).items():
        q = torch.randint(0, MAX_CODE[bits] + 1, (n, k), generator=g, dtype=torch.uint8)
        mant = torch.randint(4, 9, (n, k // GROUP_SIZE), generator=g).float() / 8
        scales = (mant * 2.0**-6).to(torch.float16)
        codes = pack_codes(q, bits)
        packed[key] = codes
        packed[key[: -len("weight")] + "weight_scale"] = scales
        dense[key] = dequantize(codes, scales, bits, torch.float32).to(torch.bfloat16)
    shapes = diffusers_dense_tensors(cfg)
    for key, dkey in bfl_dense_tensors(cfg).items():
        t = (torch.randn(shapes[dkey], generator=g) * (1.0 if key.endswith(".scale") else 0.02)).to(torch.bfloat16)
        packed[key] = t
        dense[key] = t.clone()
    return packed, dense


def _pair(n: int, k: int, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # up is not zero-initialised (as in a trained LoRA), so every branch changes the output
    return torch.randn(n, rank, generator=g) * 0.05, torch.randn(rank, k, generator=g) * 0.05


def lora_tensors(names: dict[str, tuple[int, int]], style: str, rank: int = 4, seed: int = 1, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A LoRA for module names -> (out, in) in one tensor-naming style.

    style: ``AB`` (``.lora_A/.lora_B.weight``, peft/diffusers/BFL), ``updown`` (``.lora_up/.lora_down.weight``
    kohya), ``loha`` (``.hada_w*``), ``lokr`` (``.lokr_w1`` + ``.lokr_w2_a/b``), ``locon_mid`` (1x1 ``lora_mid``),
    ``diff`` (``.diff``).
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, (n, k) in names.items():
        if style == "AB":
            up, down = _pair(n, k, rank, g)
            out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down.to(torch.bfloat16), up.to(torch.bfloat16)
        elif style in ("updown", "locon_mid"):
            up, down = _pair(n, k, rank, g)
            out[f"{name}.lora_up.weight"], out[f"{name}.lora_down.weight"] = up.half(), down.half()
            if style == "locon_mid":
                out[f"{name}.lora_mid.weight"] = (torch.randn(rank, rank, 1, 1, generator=g) * 0.5).half()
        elif style == "loha":
            for i in (1, 2):
                a, b = _pair(n, k, rank, g)
                out[f"{name}.hada_w{i}_a"], out[f"{name}.hada_w{i}_b"] = a * 4, b * 4
        elif style == "lokr":
            f = 4  # kron factor: w1 [4, 4] full, w2 [n/4, k/4] = w2_a @ w2_b
            out[f"{name}.lokr_w1"] = torch.randn(f, f, generator=g)
            a, b = _pair(n // f, k // f, rank, g)
            out[f"{name}.lokr_w2_a"], out[f"{name}.lokr_w2_b"] = a, b
        elif style == "diff":
            out[f"{name}.diff"] = torch.randn(n, k, generator=g) * 0.01
        else:
            raise ValueError(style)
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


# ---------------------------------------------------------------------------
# The key formats (module names a LoRA uses) that comfy.lora.model_lora_keys_unet maps for FLUX.2
# ---------------------------------------------------------------------------


def bfl_names(prefix: str = "diffusion_model.", cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """BFL module names (``diffusion_model.double_blocks.0.img_attn.qkv``) of all packed layers."""
    return {prefix + k[: -len(".weight")]: s for k, s in quantized_shapes(cfg).items()}


def kohya_names(cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """kohya/sd-scripts FLUX names: ``lora_unet_double_blocks_0_img_attn_qkv``."""
    return {"lora_unet_" + k.replace(".", "_"): s for k, s in bfl_names("", cfg).items()}


def diffusers_names(prefix: str = "transformer.", cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """diffusers FLUX.2 module names; separate q/k/v land on slices of the fused ``qkv``.

    ``to_out.0`` is written without ``.0`` (ComfyUI maps ``to_out``); single blocks use the fused
    ``to_qkv_mlp_proj`` / ``to_out`` of ``Flux2SingleTransformerBlock``.
    """
    out: dict[str, tuple[int, int]] = {}
    for name, shape in diffusers_quantized_linears(cfg).items():
        out[prefix + name] = shape
    return out


def single_qkv_slice_names(prefix: str = "transformer.", cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """FLUX.1-style single-block ``attn.to_q/k/v``: ComfyUI maps them to q/k/v slices of ``linear1``."""
    h = cfg.hidden_size
    return {f"{prefix}single_transformer_blocks.{j}.attn.{p}": (h, h) for j in range(cfg.depth_single) for p in ("to_q", "to_k", "to_v")}


def linear1_qkv_names(cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """BFL ``single_blocks.N.linear1_qkv`` (the qkv part of linear1, offset 0..3*hidden)."""
    h = cfg.hidden_size
    return {f"diffusion_model.single_blocks.{j}.linear1_qkv": (3 * h, h) for j in range(cfg.depth_single)}


def dense_edge_names(cfg: KleinConfig = CFG) -> dict[str, tuple[int, int]]:
    """Dense (not packed) layers a LoRA may also touch: stock ComfyUI merges these."""
    h = cfg.hidden_size
    return {
        "diffusion_model.img_in": (h, cfg.in_channels),
        "diffusion_model.double_stream_modulation_img.lin": (6 * h, h),
    }
