"""Synthetic Bonsai transformers in every layout the runtime can write (canonical, gemlite, mlx,
unpacked, gguf).

A fixture is a lazy :class:`BonsaiCheckpoint` whose every tensor comes from its own seeded stream
(:mod:`.seeded`), written by the runtime's own writers (``bonsai_core.convert``), so fixtures take
the code paths real files take. Values mimic the release: scales are bf16 values in [2^-8, 2^-3)
(exact in bf16, fp16 and fp32, so every layout holds them losslessly), codes uniform over
{-s, +s} or {-s, 0, +s}, dense edge linears bf16 ~ N(0, 1/in), QK-norm scales bf16 near 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bonsai_core.checkpoint import BonsaiCheckpoint, BonsaiMeta
from bonsai_core.klein import GROUP_SIZE, KleinConfig
from bonsai_core.packing import VARIANT_BITS, PackedWeight, pack_codes

from .seeded import klein_config, tensor_generator

_NAMESPACE = "bonsai-fixture"


def synthetic_scales(n: int, groups: int, g: torch.Generator) -> torch.Tensor:
    """fp16 [n, groups] of bf16-exact magnitudes 2^e * (1 + m/128), e in [-8, -4], m in [0, 127]."""
    e = torch.randint(-8, -3, (n, groups), generator=g, dtype=torch.int32).float()
    m = torch.randint(0, 128, (n, groups), generator=g, dtype=torch.int32).float()
    return (torch.exp2(e) * (1 + m / 128)).to(torch.float16)


def synthetic_packed(key: str, n: int, k: int, bits: int, seed: int) -> PackedWeight:
    g = tensor_generator(_NAMESPACE, seed, key)
    if bits == 1:
        codes = torch.randint(0, 256, (n, k // 8), generator=g, dtype=torch.uint8)  # every bit pattern is valid
    else:
        codes = pack_codes(torch.randint(0, 3, (n, k), generator=g, dtype=torch.uint8), 2)
    return PackedWeight(codes, synthetic_scales(n, k // GROUP_SIZE, g), bits)


def synthetic_dense(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = tensor_generator(_NAMESPACE, seed, key)
    if len(shape) == 1:  # QK-norm scale
        return (1 + 0.05 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return (torch.randn(shape, generator=g) / shape[1] ** 0.5).to(torch.bfloat16)


def synthetic_checkpoint(variant: str, size: str | KleinConfig = "tiny", seed: int = 0) -> BonsaiCheckpoint:
    """A lazy, deterministic Bonsai checkpoint (BFL names) of the given variant and geometry."""
    if variant not in VARIANT_BITS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_BITS)}")
    cfg = klein_config(size)
    from bonsai_core.formats.layout import bfl_expected_shapes

    q_shapes, d_shapes = bfl_expected_shapes(cfg)
    bits = VARIANT_BITS[variant]
    label = size if isinstance(size, str) else "custom"
    meta = BonsaiMeta(variant=variant, config=cfg, source_format="canonical", source_repo=f"synthetic/{variant}-{label}-seed{seed}")
    return BonsaiCheckpoint(
        path=Path(f"<synthetic {variant} {label} seed {seed}>"),
        meta=meta,
        packed_shapes=q_shapes,
        dense_shapes={k: (torch.bfloat16, tuple(s)) for k, s in d_shapes.items()},
        load_packed=lambda k: synthetic_packed(k, *q_shapes[k], bits, seed),
        load_dense=lambda k: synthetic_dense(k, tuple(d_shapes[k]), seed),
        extra={"scale_dtypes": dict.fromkeys(q_shapes, torch.float16)},
    )


def make_fixture(variant: str, size: str, fmt: str, seed: int, out: str | os.PathLike[str]) -> Path:
    """Write a synthetic transformer in ``fmt`` (any format the runtime writes) to ``out``.

    Folder layouts (gemlite, and mlx/unpacked unless ``out`` ends in ``.safetensors``) produce a
    released snapshot root with the transformer pack folder inside. Returns the written path."""
    from bonsai_core.convert import write_checkpoint

    return write_checkpoint(synthetic_checkpoint(variant, size, seed), out, fmt)
