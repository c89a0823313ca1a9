"""FLUX.2 Klein transformer geometry and the diffusers <-> BFL/ComfyUI key maps.

Bonsai packs use diffusers names (separate q/k/v); ComfyUI uses BFL names (fused qkv).
Fusing and splitting act along N (out_features), so 128-groups along K survive intact.
Everything here is derived from a :class:`KleinConfig`, so the tiny CI model and the real
Klein 4B share one code path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GROUP_SIZE = 128


@dataclass(frozen=True)
class KleinConfig:
    """Shape parameters of a FLUX.2 Klein transformer (diffusers ``Flux2Transformer2DModel``)."""

    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 5  # double-stream blocks (diffusers ``num_layers``)
    depth_single: int = 20  # single-stream blocks (diffusers ``num_single_layers``)
    in_channels: int = 128
    context_in_dim: int = 7680  # 3 x Qwen3-4B hidden size
    mlp_ratio: float = 3.0
    time_dim: int = 256  # diffusers ``timestep_guidance_channels``

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def to_diffusers_config(self) -> dict[str, Any]:
        """The ``transformer/config.json`` a released pack would carry for this geometry."""
        return {
            "_class_name": "Flux2Transformer2DModel",
            "attention_head_dim": self.head_dim,
            "axes_dims_rope": [32, 32, 32, 32],
            "eps": 1e-06,
            "guidance_embeds": False,
            "in_channels": self.in_channels,
            "joint_attention_dim": self.context_in_dim,
            "mlp_ratio": self.mlp_ratio,
            "num_attention_heads": self.num_heads,
            "num_layers": self.depth,
            "num_single_layers": self.depth_single,
            "out_channels": None,
            "patch_size": 1,
            "rope_theta": 2000,
            "timestep_guidance_channels": self.time_dim,
        }

    @classmethod
    def from_diffusers_config(cls, cfg: dict[str, Any]) -> KleinConfig:
        heads = int(cfg["num_attention_heads"])
        return cls(
            hidden_size=heads * int(cfg["attention_head_dim"]),
            num_heads=heads,
            depth=int(cfg["num_layers"]),
            depth_single=int(cfg["num_single_layers"]),
            in_channels=int(cfg["in_channels"]),
            context_in_dim=int(cfg["joint_attention_dim"]),
            mlp_ratio=float(cfg.get("mlp_ratio", 3.0)),
            time_dim=int(cfg.get("timestep_guidance_channels", 256)),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


KLEIN_4B = KleinConfig()
# Small enough to sample on CPU in seconds, still detected by ComfyUI as FLUX.2
# (heads = hidden/128, 128 latent channels, every quantized K a multiple of 128).
# context_in_dim = 3 x 128 matches the tiny Qwen3 text-encoder fixture.
KLEIN_TINY = KleinConfig(hidden_size=256, num_heads=2, depth=1, depth_single=2, context_in_dim=384)


# ---------------------------------------------------------------------------
# diffusers inventory
# ---------------------------------------------------------------------------

_DOUBLE_ATTN = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out")
_NORMS_DOUBLE = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
_NORMS_SINGLE = ("norm_q", "norm_k")

# The 9 linears every Bonsai release keeps dense (quantization_config.json ``skip_patterns``).
DIFFUSERS_SKIP_PATTERNS = (
    "x_embedder",
    "context_embedder",
    "proj_out",
    "norm_out.linear",
    "time_guidance_embed.timestep_embedder.linear_1",
    "time_guidance_embed.timestep_embedder.linear_2",
    "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.linear",
    "single_stream_modulation.linear",
)


def diffusers_quantized_linears(cfg: KleinConfig) -> dict[str, tuple[int, int]]:
    """The quantized diffusers linears (module names, no ``.weight``) -> (out, in), in file order."""
    h, m = cfg.hidden_size, cfg.mlp_hidden
    out: dict[str, tuple[int, int]] = {}
    for i in range(cfg.depth):
        p = f"transformer_blocks.{i}"
        for name in _DOUBLE_ATTN:
            out[f"{p}.attn.{name}"] = (h, h)
        for ff in ("ff", "ff_context"):
            out[f"{p}.{ff}.linear_in"] = (2 * m, h)
            out[f"{p}.{ff}.linear_out"] = (h, m)
    for j in range(cfg.depth_single):
        p = f"single_transformer_blocks.{j}.attn"
        out[f"{p}.to_qkv_mlp_proj"] = (3 * h + 2 * m, h)
        out[f"{p}.to_out"] = (h, h + m)
    return out


def diffusers_dense_tensors(cfg: KleinConfig) -> dict[str, tuple[int, ...]]:
    """The dense diffusers tensors (full keys) -> shape: 9 edge linears and the QK norms."""
    h = cfg.hidden_size
    out: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (h, cfg.in_channels),
        "context_embedder.weight": (h, cfg.context_in_dim),
        "time_guidance_embed.timestep_embedder.linear_1.weight": (h, cfg.time_dim),
        "time_guidance_embed.timestep_embedder.linear_2.weight": (h, h),
        "double_stream_modulation_img.linear.weight": (6 * h, h),
        "double_stream_modulation_txt.linear.weight": (6 * h, h),
        "single_stream_modulation.linear.weight": (3 * h, h),
        "norm_out.linear.weight": (2 * h, h),
        "proj_out.weight": (cfg.in_channels, h),
    }
    for i in range(cfg.depth):
        for n in _NORMS_DOUBLE:
            out[f"transformer_blocks.{i}.attn.{n}.weight"] = (cfg.head_dim,)
    for j in range(cfg.depth_single):
        for n in _NORMS_SINGLE:
            out[f"single_transformer_blocks.{j}.attn.{n}.weight"] = (cfg.head_dim,)
    return out


# ---------------------------------------------------------------------------
# BFL / ComfyUI inventory and the key map
# ---------------------------------------------------------------------------


def bfl_quantized_layers(cfg: KleinConfig) -> dict[str, list[str]]:
    """BFL linear key (``...qkv.weight``) -> the diffusers modules fused into it, in N order."""
    out: dict[str, list[str]] = {}
    for i in range(cfg.depth):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        out[f"{b}.img_attn.qkv.weight"] = [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"]
        out[f"{b}.img_attn.proj.weight"] = [f"{d}.attn.to_out.0"]
        out[f"{b}.img_mlp.0.weight"] = [f"{d}.ff.linear_in"]
        out[f"{b}.img_mlp.2.weight"] = [f"{d}.ff.linear_out"]
        out[f"{b}.txt_attn.qkv.weight"] = [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"]
        out[f"{b}.txt_attn.proj.weight"] = [f"{d}.attn.to_add_out"]
        out[f"{b}.txt_mlp.0.weight"] = [f"{d}.ff_context.linear_in"]
        out[f"{b}.txt_mlp.2.weight"] = [f"{d}.ff_context.linear_out"]
    for j in range(cfg.depth_single):
        d, b = f"single_transformer_blocks.{j}.attn", f"single_blocks.{j}"
        out[f"{b}.linear1.weight"] = [f"{d}.to_qkv_mlp_proj"]
        out[f"{b}.linear2.weight"] = [f"{d}.to_out"]
    return out


# Dense BFL key -> diffusers key. ``final_layer.adaLN_modulation.1`` additionally swaps halves.
_BFL_DENSE_STATIC = {
    "img_in.weight": "x_embedder.weight",
    "txt_in.weight": "context_embedder.weight",
    "time_in.in_layer.weight": "time_guidance_embed.timestep_embedder.linear_1.weight",
    "time_in.out_layer.weight": "time_guidance_embed.timestep_embedder.linear_2.weight",
    "double_stream_modulation_img.lin.weight": "double_stream_modulation_img.linear.weight",
    "double_stream_modulation_txt.lin.weight": "double_stream_modulation_txt.linear.weight",
    "single_stream_modulation.lin.weight": "single_stream_modulation.linear.weight",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.adaLN_modulation.1.weight": "norm_out.linear.weight",
}
SWAPPED_HALVES_KEY = "final_layer.adaLN_modulation.1.weight"


def bfl_dense_tensors(cfg: KleinConfig) -> dict[str, str]:
    """Dense BFL key -> diffusers key (edge linears and QK-norm scales)."""
    out = dict(_BFL_DENSE_STATIC)
    for i in range(cfg.depth):
        d, b = f"transformer_blocks.{i}.attn", f"double_blocks.{i}"
        out[f"{b}.img_attn.norm.query_norm.scale"] = f"{d}.norm_q.weight"
        out[f"{b}.img_attn.norm.key_norm.scale"] = f"{d}.norm_k.weight"
        out[f"{b}.txt_attn.norm.query_norm.scale"] = f"{d}.norm_added_q.weight"
        out[f"{b}.txt_attn.norm.key_norm.scale"] = f"{d}.norm_added_k.weight"
    for j in range(cfg.depth_single):
        d, b = f"single_transformer_blocks.{j}.attn", f"single_blocks.{j}"
        out[f"{b}.norm.query_norm.scale"] = f"{d}.norm_q.weight"
        out[f"{b}.norm.key_norm.scale"] = f"{d}.norm_k.weight"
    return out


def swap_halves(t: Any) -> Any:
    """diffusers ``norm_out.linear`` is (scale, shift); BFL ``adaLN_modulation.1`` is (shift, scale)."""
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def infer_config_from_diffusers_shapes(shapes: dict[str, tuple[int, ...]]) -> KleinConfig:
    """Geometry of a diffusers-named Klein state dict from its tensor shapes (no config.json needed)."""
    h, in_ch = shapes["x_embedder.weight"]
    ctx = shapes["context_embedder.weight"][1]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks."))
    single = [int(k.split(".")[1]) for k in shapes if k.startswith("single_transformer_blocks.")]
    mlp = shapes["transformer_blocks.0.ff.linear_out.weight"][1]
    time_dim = shapes["time_guidance_embed.timestep_embedder.linear_1.weight"][1]
    return KleinConfig(
        hidden_size=h,
        num_heads=h // head_dim,
        depth=depth,
        depth_single=1 + max(single) if single else 0,
        in_channels=in_ch,
        context_in_dim=ctx,
        mlp_ratio=mlp / h,
        time_dim=time_dim,
    )


def infer_config_from_bfl_shapes(shapes: dict[str, tuple[int, ...]]) -> KleinConfig:
    """Geometry of a BFL-named Klein state dict; packed linears report their logical (out, in)."""
    h, in_ch = shapes["img_in.weight"]
    ctx = shapes["txt_in.weight"][1]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("double_blocks."))
    single = [int(k.split(".")[1]) for k in shapes if k.startswith("single_blocks.")]
    mlp = shapes["double_blocks.0.img_mlp.2.weight"][1]
    return KleinConfig(
        hidden_size=h,
        num_heads=h // head_dim,
        depth=depth,
        depth_single=1 + max(single) if single else 0,
        in_channels=in_ch,
        context_in_dim=ctx,
        mlp_ratio=mlp / h,
        time_dim=shapes["time_in.in_layer.weight"][1],
    )
