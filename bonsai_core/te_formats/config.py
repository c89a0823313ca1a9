"""The text encoder's geometry: ``config.json`` read with limits, and the tensors it implies.

The released text encoder is Qwen3-4B (36 layers, hidden 2560, MLP 9728, 32 query / 8 KV heads
of 128, vocabulary 151,936). :data:`CONFIG_LIMITS` bounds every number a config declares far
above that and far below what would allocate gigabytes, so a config declaring 10**9 layers is
refused before any list of expected tensors is built from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bounded import read_json_object
from ..errors import BonsaiFormatError
from .packed import TEWeights

# Per decoder layer: the 7 quantized linears and the dense norms, HF names below model.layers.N.
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")

CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (64, 16384),
    "intermediate_size": (64, 131072),
    "num_hidden_layers": (1, 256),
    "num_attention_heads": (1, 256),
    "num_key_value_heads": (1, 256),
    "vocab_size": (1, 1 << 20),
    "head_dim": (1, 1024),
}


def read_config(folder: Path) -> dict[str, Any]:
    """``<folder>/config.json`` (a Qwen3 LM config, or one nesting it as ``text_config``), bounded."""
    path = folder / "config.json"
    if not path.exists() and not path.is_symlink():
        raise BonsaiFormatError(path, None, "config.json is missing next to the text encoder weights")
    config = read_json_object(path)
    assert config is not None
    # some exports nest the language model config (VL-style); the TE is a plain Qwen3 LM
    config = config.get("text_config", config)
    if not isinstance(config, dict):
        raise BonsaiFormatError(path, "text_config", "is not a JSON object")
    for key, (lo, hi) in CONFIG_LIMITS.items():
        v = config.get(key)
        if key == "head_dim" and v is None:
            continue
        if type(v) is not int:
            raise BonsaiFormatError(path, key, f"config.json lacks integer '{key}'")
        if not lo <= v <= hi:
            raise BonsaiFormatError(path, key, f"{v} is outside what a Qwen3 text encoder can be ({lo}..{hi})")
    if config["num_attention_heads"] % config["num_key_value_heads"]:
        raise BonsaiFormatError(path, "num_key_value_heads", "does not divide num_attention_heads")
    if "head_dim" not in config and config["hidden_size"] % config["num_attention_heads"]:
        raise BonsaiFormatError(path, "num_attention_heads", "does not divide hidden_size (and no head_dim is given)")
    return config


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 1000000.0)


def expected_linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    h, i, hd = config["hidden_size"], config["intermediate_size"], head_dim(config)
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    per_layer = {
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
    return {f"model.layers.{n}.{name}.weight": shape for n in range(config["num_hidden_layers"]) for name, shape in per_layer.items()}


def expected_dense_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, hd = config["hidden_size"], head_dim(config)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(config["num_hidden_layers"]):
        for name in LAYER_NORMS:
            shapes[f"model.layers.{n}.{name}.weight"] = (hd,) if name.startswith("self_attn") else (h,)
    return shapes


def check_inventory(config: dict[str, Any], file: Path, packed: dict[str, tuple[int, ...]], dense: dict[str, tuple[int, ...]]) -> None:
    """Every tensor the config implies is present with its shape; nothing is silently dropped.

    ``packed``/``dense``: name -> logical shape of what the file holds, known from its header
    (MLX) or index (HQQ) before any weight is read."""
    want_packed = expected_linear_shapes(config)
    want_dense = expected_dense_shapes(config)
    embed = "model.embed_tokens.weight"
    for name, shape in want_packed.items():
        if name not in packed:
            raise BonsaiFormatError(file, name, "quantized linear is missing" + (" (stored dense?)" if name in dense else ""))
        if tuple(packed[name]) != shape:
            raise BonsaiFormatError(file, name, f"shape {list(packed[name])} does not match config.json ({list(shape)})")
    for name, shape in want_dense.items():
        if name == embed and name in packed:
            got = packed[name]
        elif name in dense:
            got = dense[name]
        else:
            raise BonsaiFormatError(file, name, "tensor is missing")
        if tuple(got) != shape:
            raise BonsaiFormatError(file, name, f"shape {list(got)} does not match config.json ({list(shape)})")
    unknown = sorted((set(packed) - set(want_packed) - {embed}) | (set(dense) - set(want_dense)))
    if unknown:
        raise BonsaiFormatError(
            file, unknown[0], f"unexpected tensor for a {config['num_hidden_layers']}-layer Qwen3 ({len(unknown)} unexpected)"
        )


def check_complete(te: TEWeights, file: Path) -> None:
    """:func:`check_inventory` over weights already read."""
    check_inventory(te.config, file, {k: p.shape for k, p in te.packed.items()}, {k: tuple(t.shape) for k, t in te.dense.items()})
