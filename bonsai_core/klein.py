"""FLUX.2 Klein transformer geometry and the diffusers <-> BFL/ComfyUI key maps.

Bonsai packs use diffusers names (separate q/k/v); ComfyUI uses BFL names (fused qkv).
Fusing and splitting act along N (out_features), so 128-groups along K survive intact.
Everything here is derived from a :class:`KleinConfig`, so the tiny CI model and the real
Klein 4B share one code path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

# The one group size of every Bonsai layout: one scale per 128 consecutive inputs (along K).
GROUP_SIZE = 128
# The two Bonsai variants and their bits per weight code (binary {-1,+1}, ternary {-1,0,+1}).
VARIANT_BITS = {"binary": 1, "ternary": 2}

# What a FLUX.2 Klein transformer can be. Klein 4B is (3072, 24 heads, 5 + 20 blocks); the caps
# leave room for larger Klein siblings and stay small enough that every list derived from a
# config (the inventory, the key maps) is a few thousand entries at most. A file declaring more
# (depth 10**9, say) is refused from its header, before anything is allocated for it.
CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (GROUP_SIZE, 16384),
    "num_heads": (1, 256),
    "depth": (1, 64),
    "depth_single": (0, 128),
    "in_channels": (1, 4096),
    "context_in_dim": (1, 65536),
    "time_dim": (1, 8192),
}
MAX_MLP_RATIO = 16.0


class GeometryError(ValueError):
    """A transformer geometry that is no FLUX.2 Klein; ``tensor`` names the key that showed it."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


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

    def __post_init__(self) -> None:
        # Checked once here, so every config a reader builds (from metadata, config.json or
        # tensor shapes) is bounded before any inventory is derived from it.
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "mlp_ratio":
                if type(v) not in (int, float) or not math.isfinite(v) or not 0 < v <= MAX_MLP_RATIO:
                    raise GeometryError(f"mlp_ratio {v!r} is not a number in (0, {MAX_MLP_RATIO}]")
                continue
            lo, hi = CONFIG_LIMITS[f.name]
            if type(v) is not int or not lo <= v <= hi:
                raise GeometryError(f"{f.name} {v!r} is outside what a Klein transformer can be ({lo}..{hi})")
        if self.hidden_size % self.num_heads or self.hidden_size % GROUP_SIZE:
            raise GeometryError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads} and of {GROUP_SIZE}")
        if self.mlp_hidden <= 0 or self.mlp_hidden % GROUP_SIZE:
            raise GeometryError(f"MLP width {self.mlp_hidden} (hidden_size x mlp_ratio) is not a positive multiple of {GROUP_SIZE}")

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
        """From a diffusers ``config.json``; a missing or non-integer field is a GeometryError naming it."""

        def num(key: str, default: int | float | None = None, kind: type = int) -> Any:
            v = cfg.get(key, default)
            ok = type(v) is int or (kind is float and type(v) is float)
            if v is None or not ok:
                raise GeometryError(
                    f"'{key}' is {'missing' if v is None else repr(v)[:40]}; expected {'a number' if kind is float else 'an integer'}", key
                )
            return v

        heads = num("num_attention_heads")
        return cls(
            hidden_size=heads * num("attention_head_dim"),
            num_heads=heads,
            depth=num("num_layers"),
            depth_single=num("num_single_layers"),
            in_channels=num("in_channels"),
            context_in_dim=num("joint_attention_dim"),
            mlp_ratio=float(num("mlp_ratio", 3.0, float)),
            time_dim=num("timestep_guidance_channels", 256),
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


def bfl_expected_shapes(cfg: KleinConfig) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, ...]]]:
    """(quantized BFL key -> (out, in), dense BFL key -> shape) for ``cfg``."""
    d = diffusers_quantized_linears(cfg)
    q = {bk: (sum(d[m][0] for m in mods), d[mods[0]][1]) for bk, mods in bfl_quantized_layers(cfg).items()}
    dd = diffusers_dense_tensors(cfg)
    return q, {bk: dd[dk] for bk, dk in bfl_dense_tensors(cfg).items()}


def swap_halves(t: Any) -> Any:
    """diffusers ``norm_out.linear`` is (scale, shift); BFL ``adaLN_modulation.1`` is (shift, scale)."""
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _dim(shapes: dict[str, tuple[int, ...]], key: str, axis: int) -> int:
    if key not in shapes:
        raise GeometryError("tensor is missing", key)
    shape = shapes[key]
    if len(shape) <= axis:
        raise GeometryError(f"shape {list(shape)} has no axis {axis}", key)
    return int(shape[axis])


def _block_count(shapes: dict[str, tuple[int, ...]], prefix: str, limit: int) -> int:
    """1 + the highest block index among ``<prefix>.<i>.*`` keys (0 when there is none), refusing
    an index above ``limit`` from the name alone, before anything is built for it."""
    top = -1
    for k in shapes:
        if not k.startswith(prefix + "."):
            continue
        idx = k[len(prefix) + 1 :].partition(".")[0]
        if not idx.isascii() or not idx.isdigit() or len(idx) > 6 or int(idx) >= limit:
            raise GeometryError(f"block index {idx[:20]!r} is not a number below {limit}", k)
        top = max(top, int(idx))
    return top + 1


def _config(tensor: str, **kw: Any) -> KleinConfig:
    try:
        return KleinConfig(**kw)
    except GeometryError as e:
        raise GeometryError(f"the tensor shapes describe no Klein transformer: {e}", e.tensor or tensor) from None


def infer_config_from_diffusers_shapes(shapes: dict[str, tuple[int, ...]]) -> KleinConfig:
    """Geometry of a diffusers-named Klein state dict from its tensor shapes (no config.json needed)."""
    h, in_ch = _dim(shapes, "x_embedder.weight", 0), _dim(shapes, "x_embedder.weight", 1)
    head_dim = _dim(shapes, "transformer_blocks.0.attn.norm_q.weight", 0)
    mlp = _dim(shapes, "transformer_blocks.0.ff.linear_out.weight", 1)
    if h <= 0 or head_dim <= 0:
        raise GeometryError(f"hidden size {h} / head dim {head_dim} must be positive", "x_embedder.weight")
    return _config(
        "x_embedder.weight",
        hidden_size=h,
        num_heads=h // head_dim,
        depth=_block_count(shapes, "transformer_blocks", CONFIG_LIMITS["depth"][1]),
        depth_single=_block_count(shapes, "single_transformer_blocks", CONFIG_LIMITS["depth_single"][1]),
        in_channels=in_ch,
        context_in_dim=_dim(shapes, "context_embedder.weight", 1),
        mlp_ratio=mlp / h,
        time_dim=_dim(shapes, "time_guidance_embed.timestep_embedder.linear_1.weight", 1),
    )


def infer_config_from_bfl_shapes(shapes: dict[str, tuple[int, ...]]) -> KleinConfig:
    """Geometry of a BFL-named Klein state dict; packed linears report their logical (out, in)."""
    h, in_ch = _dim(shapes, "img_in.weight", 0), _dim(shapes, "img_in.weight", 1)
    head_dim = _dim(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", 0)
    mlp = _dim(shapes, "double_blocks.0.img_mlp.2.weight", 1)
    if h <= 0 or head_dim <= 0:
        raise GeometryError(f"hidden size {h} / head dim {head_dim} must be positive", "img_in.weight")
    return _config(
        "img_in.weight",
        hidden_size=h,
        num_heads=h // head_dim,
        depth=_block_count(shapes, "double_blocks", CONFIG_LIMITS["depth"][1]),
        depth_single=_block_count(shapes, "single_blocks", CONFIG_LIMITS["depth_single"][1]),
        in_channels=in_ch,
        context_in_dim=_dim(shapes, "txt_in.weight", 1),
        mlp_ratio=mlp / h,
        time_dim=_dim(shapes, "time_in.in_layer.weight", 1),
    )
