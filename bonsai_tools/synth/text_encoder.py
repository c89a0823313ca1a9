"""Synthetic Qwen3 text encoders in the released layouts: 4-bit HQQ (CUDA releases), 4-bit MLX
(Apple releases) and sharded bf16 (unpacked releases).

``write_hqq`` produces exactly what HQQ's ``save_quantized`` writes (``config.json`` with
``architectures`` + ``qmodel.pt`` of raw per-module state dicts, ``encoded_state_dict=False``);
``write_mlx`` what mlx-lm writes (``config.json`` with ``quantization`` + one
``model.safetensors``, uint32 words, ``model.`` prefix, quantized embedding); ``write_dense_te``
what ``save_pretrained`` writes for a bf16 ``Qwen3ForCausalLM``. Weights are random but valid:
4-bit codes uniform in 0..15, scales/offsets around a realistic weight scale. Names, group size
and shapes come from the runtime's readers (``bonsai_core.te_formats``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bonsai_core.atomic import atomic_path
from bonsai_core.safetensors_io import TensorSpec, write_safetensors
from bonsai_core.te_formats import (
    HQQ_FILE,
    MLX_FILE,
    TE_GROUP_SIZE,
    Packed4Bit,
    TEWeights,
    codes_to_hqq_packed,
    expected_dense_shapes,
    expected_linear_shapes,
)

from .files import write_json, write_tokenizer

_QWEN3_COMMON: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
}

QWEN3_4B_CONFIG: dict[str, Any] = {
    **_QWEN3_COMMON,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
}

# Small enough for CPU tests, but 28 layers so that layers 9/18/27 exist, and the real vocab
# so that the real Qwen tokenizer's ids fit.
QWEN3_TINY_CONFIG: dict[str, Any] = {
    **_QWEN3_COMMON,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 28,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": 151936,
    "max_window_layers": 28,
}

TE_CONFIGS = {"tiny": QWEN3_TINY_CONFIG, "full": QWEN3_4B_CONFIG}


def write_hqq(te: TEWeights, out_dir: str | os.PathLike[str], *, prefix: str = "model.", lm_head: str = "tied") -> Path:
    """Write ``te`` (HQQ-layout packed weights) as HQQ's ``save_quantized`` does.

    ``prefix="model."`` mimics a quantized ``Qwen3ForCausalLM``, ``""`` a ``Qwen3Model``;
    ``lm_head="tied"`` stores the (tied) embedding again under ``lm_head`` as a CausalLM does.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights: dict[str, dict[str, Any]] = {}
    for name, p in te.packed.items():
        if p.layout != "hqq":
            raise ValueError(f"{name}: cannot write {p.layout} parameters as HQQ (the offsets mean different things)")
        n, k = p.shape
        groups = n * k // p.group_size
        weights[_strip(name, prefix)] = {
            "W_q": torch.nn.Parameter(codes_to_hqq_packed(p.codes, p.group_size), requires_grad=False),
            "nbits": 4,
            "group_size": p.group_size,
            "shape": torch.Size([n, k]),
            "scale": p.scales.to(torch.float16).reshape(groups, 1),
            "zero": p.offsets.to(torch.float16).reshape(groups, 1),
            "axis": 1,
            "packing": "4bit_u8",
            "unpack_view_dtype": torch.uint8,
            "view_as_float": False,
            "quant_scale": False,
            "quant_zero": False,
            "compute_dtype": torch.float16,
            "offload_meta": False,
            "stores_quant_config": True,
            "channel_wise": True,
            "optimize": True,
            "round_zero": False,
        }
    for name, t in te.dense.items():
        module, param = name.rsplit(".", 1)
        weights.setdefault(_strip(module, prefix), {})[param] = t
    if lm_head == "tied":
        weights["lm_head"] = {"weight": te.dense["model.embed_tokens.weight"]}
    config = {**te.config, "architectures": ["Qwen3ForCausalLM" if prefix else "Qwen3Model"]}
    write_json(out / "config.json", config)
    with atomic_path(out / HQQ_FILE) as tmp:
        torch.save(weights, tmp)
    return out


def _strip(name: str, prefix: str) -> str:
    name = name[: -len(".weight")] if name.endswith(".weight") else name
    return name if prefix else name.removeprefix("model.")


def write_mlx(te: TEWeights, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``te`` (MLX-layout packed weights) as mlx-lm saves a 4-bit g64 model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs: list[TensorSpec] = []
    for name, p in sorted(te.packed.items()):
        if p.layout != "mlx":
            raise ValueError(f"{name}: cannot write {p.layout} parameters as MLX (the offsets mean different things)")
        base = name[: -len(".weight")]
        n, kb = p.codes.shape
        specs.append(TensorSpec(name, torch.uint32, (n, kb // 4), _const(p.codes.contiguous().view(torch.uint32))))
        specs.append(TensorSpec(base + ".scales", p.scales.dtype, tuple(p.scales.shape), _const(p.scales)))
        specs.append(TensorSpec(base + ".biases", p.offsets.dtype, tuple(p.offsets.shape), _const(p.offsets)))
    for name, t in sorted(te.dense.items()):
        specs.append(TensorSpec(name, t.dtype, tuple(t.shape), _const(t)))
    specs.sort(key=lambda s: s.name)
    quant = {"group_size": TE_GROUP_SIZE, "bits": 4}
    write_json(
        out / "config.json", {**te.config, "architectures": ["Qwen3ForCausalLM"], "quantization": quant, "quantization_config": quant}
    )
    size = write_safetensors(out / MLX_FILE, specs, metadata={"format": "mlx"})
    index = {"metadata": {"total_size": size}, "weight_map": {s.name: MLX_FILE for s in specs}}
    write_json(out / (MLX_FILE + ".index.json"), index)
    return out


def _const(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: t


def random_te(config: dict[str, Any], layout: str, seed: int = 0, *, quantize_embedding: bool | None = None) -> TEWeights:
    """Random packed weights for ``config`` in ``layout`` (MLX also quantizes the embedding, as released)."""
    g = torch.Generator().manual_seed(seed)
    quantize_embedding = layout == "mlx" if quantize_embedding is None else quantize_embedding
    shapes = dict(expected_linear_shapes(config))
    if quantize_embedding:
        shapes["model.embed_tokens.weight"] = (config["vocab_size"], config["hidden_size"])
    packed = {name: _random_packed(n, k, layout, g, std=0.5 if "embed" in name else k**-0.5) for name, (n, k) in shapes.items()}
    dense: dict[str, torch.Tensor] = {}
    for name, shape in expected_dense_shapes(config).items():
        if name in packed:
            continue
        if name == "model.embed_tokens.weight":
            dense[name] = (torch.randn(shape, generator=g) * 0.5).to(torch.bfloat16)
        else:  # RMSNorm weights near 1
            dense[name] = (1.0 + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return TEWeights(config=dict(config), packed=packed, dense=dense, layout=layout, path=Path("."))


def _random_packed(n: int, k: int, layout: str, g: torch.Generator, std: float) -> Packed4Bit:
    groups = k // TE_GROUP_SIZE
    codes = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    # uniform codes have std ~4.6: scale so the weights have roughly ``std``
    scales = std / 4.6 * (0.75 + 0.5 * torch.rand(n, groups, generator=g))
    zeros = 7.5 + torch.randn(n, groups, generator=g) * 0.5
    if layout == "hqq":
        return Packed4Bit(codes, scales.to(torch.float16), zeros.to(torch.float16), "hqq")
    scales = scales.to(torch.bfloat16)
    return Packed4Bit(codes, scales, (-zeros * scales.float()).to(torch.bfloat16), "mlx")


def make_te_fixture(
    fmt: str,
    size: str,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_src: str | os.PathLike[str] | None = None,
    hqq_prefix: str = "model.",
) -> Path:
    """Write a random text encoder in the released layout ``fmt`` (``hqq``/``mlx``) at ``size``
    (``tiny``/``full``) into ``out_dir`` (the ``text_encoder-*-4bit`` folder itself).

    ``tokenizer_src``: a Qwen tokenizer folder (vocab.json/merges.txt/...) to ship alongside, as
    the releases do (``tokenizer/`` for HQQ, the folder itself for MLX; see :func:`.files.write_tokenizer`).
    """
    if fmt not in ("hqq", "mlx") or size not in TE_CONFIGS:
        raise ValueError(f"fmt must be hqq|mlx and size tiny|full, got {fmt!r}, {size!r}")
    te = random_te(TE_CONFIGS[size], fmt, seed)
    out = write_hqq(te, out_dir, prefix=hqq_prefix) if fmt == "hqq" else write_mlx(te, out_dir)
    if tokenizer_src is not None:  # the releases ship it in tokenizer/ (HQQ) or beside the weights (MLX)
        write_tokenizer(tokenizer_src, out / "tokenizer" if fmt == "hqq" else out)
    return out


DENSE_TE_SHARDS = 2  # the unpacked releases ship the bf16 Qwen3 as index + shards, as transformers saves it


def write_dense_te(config: dict[str, Any], seed: int, out_dir: str | os.PathLike[str]) -> Path:
    """A random bf16 ``Qwen3ForCausalLM`` folder as ``save_pretrained`` writes it (tied embeddings: no ``lm_head``):
    ``config.json`` + ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    shapes = {**expected_dense_shapes(config), **expected_linear_shapes(config)}
    gen = torch.Generator().manual_seed(seed)

    def produce(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 1:  # RMSNorm gains
            return (1 + 0.05 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        return (torch.randn(shape, generator=gen) / shape[1] ** 0.5).to(torch.bfloat16)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(shapes)
    weight_map: dict[str, str] = {}
    total = 0
    per = -(-len(names) // DENSE_TE_SHARDS)
    for i in range(DENSE_TE_SHARDS):
        fname = f"model-{i + 1:05d}-of-{DENSE_TE_SHARDS:05d}.safetensors"
        part = names[i * per : (i + 1) * per]
        specs = [TensorSpec(n, torch.bfloat16, shapes[n], lambda n=n: produce(n, shapes[n])) for n in part]
        write_safetensors(out / fname, specs, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
        total += sum(2 * torch.Size(shapes[n]).numel() for n in part)
    write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(out / "config.json", {**config, "architectures": ["Qwen3ForCausalLM"]})
    return out
