"""The one in-memory form of a 4-bit text-encoder weight and of a whole text encoder.

:class:`Packed4Bit`: codes uint8 ``[N, K/2]`` (code of column ``k`` in byte ``k // 2``, low
nibble for even ``k`` -- MLX's words viewed as little-endian bytes) plus scales and offsets per
group. :func:`dequantize_4bit` is the only place the two released formulas exist; it evaluates
them in the requested dtype with the same rounding steps as the reference implementations
(separate multiply and add, no FMA), so the result is bit-identical to ``mlx.core.dequantize``
and to HQQ's ``Quantizer.dequantize`` run in that compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BonsaiFormatError
from ..packing import all_finite

TE_GROUP_SIZE = 64
LAYOUTS = ("hqq", "mlx")
# How each layout combines code q, scale s and offset o -- the two released formulas, written once:
# (offset_first, offset_sign): True -> (q + sign*o) * s (HQQ: (q - zero) * scale), False -> q * s + sign*o
# (MLX: scale * q + bias). dequantize_4bit evaluates them; GPU kernels are handed these values.
FORMULA: dict[str, tuple[bool, float]] = {"hqq": (True, -1.0), "mlx": (False, 1.0)}


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (0..15) -> ``[N, K/2]``; column ``2j`` in the low nibble of byte ``j``."""
    n, k = q.shape
    if k % 2:
        raise ValueError(f"K={k} is odd")
    q = q.to(torch.uint8).reshape(n, k // 2, 2)
    return q[..., 0] | (q[..., 1] << 4)


def unpack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[N, K/2]`` -> uint8 codes ``[N, K]``."""
    n, kb = codes.shape
    return torch.stack((codes & 15, codes >> 4), dim=-1).reshape(n, kb * 2)


def dequantize_4bit(
    codes: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    layout: str,
    dtype: torch.dtype = torch.float32,
    group_size: int = TE_GROUP_SIZE,
) -> torch.Tensor:
    """THE 4-bit dequantization, for rows ``codes [R, K/2]`` with ``scales``/``offsets [R, K/gs]``.

    ``hqq``: ``W = (q - zero) * scale``; ``mlx``: ``W = scale * q + bias``. Arithmetic happens
    in ``dtype`` with one rounding per operation, as HQQ (in its compute dtype) and MLX do.
    """
    q = unpack_nibbles(codes)
    r, k = q.shape
    g = scales.shape[-1]
    if k != g * group_size or scales.shape[0] != r or offsets.shape != scales.shape:
        raise ValueError(
            f"codes imply [{r}, {k}] but scales/offsets are {list(scales.shape)}/{list(offsets.shape)} (group size {group_size})"
        )
    if layout not in FORMULA:
        raise ValueError(f"unknown 4-bit layout {layout!r}; expected one of {LAYOUTS}")
    offset_first, sign = FORMULA[layout]
    q = q.to(dtype).view(r, g, group_size)
    s = scales.to(dtype).unsqueeze(-1)
    o = offsets.to(dtype).unsqueeze(-1)
    o = o if sign > 0 else -o  # q + (-o) is q - o exactly
    w = (q + o) * s if offset_first else q * s + o
    return w.view(r, k)


@dataclass
class Packed4Bit:
    """One 4-bit weight ``[N, K]``: codes uint8 ``[N, K/2]``, scales and offsets ``[N, K/gs]``.

    ``offsets`` are HQQ zero points (code units) for ``layout="hqq"`` and MLX biases (weight
    units) for ``layout="mlx"``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    layout: str
    group_size: int = TE_GROUP_SIZE

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown 4-bit layout {self.layout!r}")
        if self.codes.dtype != torch.uint8 or self.codes.ndim != 2:
            raise ValueError(f"codes must be 2-D uint8, got {self.codes.dtype} {list(self.codes.shape)}")
        n, kb = self.codes.shape
        if self.scales.shape != (n, kb * 2 // self.group_size) or self.offsets.shape != self.scales.shape:
            raise ValueError(
                f"codes {list(self.codes.shape)} need scales/offsets [{n}, {kb * 2 // self.group_size}], got {list(self.scales.shape)}/{list(self.offsets.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.codes.shape[0], self.codes.shape[1] * 2)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_4bit(self.codes, self.scales, self.offsets, self.layout, dtype, self.group_size)


@dataclass
class TEWeights:
    """A whole text encoder: HF config, packed linears (and MLX's packed embedding), dense rest.

    Keys are HF ``Qwen3ForCausalLM`` weight names (``model.layers.0.self_attn.q_proj.weight``).
    """

    config: dict[str, Any]
    packed: dict[str, Packed4Bit]
    dense: dict[str, torch.Tensor]
    layout: str
    path: Path
    lm_head: str = "absent"  # "absent" | "tied" (HQQ may store the tied embedding as lm_head)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def packed_nbytes(self) -> int:
        return sum(p.nbytes for p in self.packed.values()) + sum(t.numel() * t.element_size() for t in self.dense.values())

    def dense_equivalent_nbytes(self, dtype: torch.dtype = torch.bfloat16) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        return sum(p.shape[0] * p.shape[1] * size for p in self.packed.values()) + sum(t.numel() * size for t in self.dense.values())

    def dequantized_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every weight dense (tests and reference comparisons only: this IS the bf16/fp32 expansion)."""
        sd = {k: v.to(dtype) for k, v in self.dense.items()}
        sd.update({k: p.dequantize(dtype) for k, p in self.packed.items()})
        return sd


def check_te_values(p: Packed4Bit, path: object, tensor: str) -> Packed4Bit:
    """Refuse non-finite scales or offsets (every 4-bit code 0..15 is valid), once per tensor read."""
    for what, t in (("scales", p.scales), ("offsets", p.offsets)):
        if t.is_floating_point() and not all_finite(t):
            raise BonsaiFormatError(path, tensor, f"{what} hold NaN or an infinity; a 4-bit weight's {what} are finite")
    if not (p.scales.is_floating_point() and p.offsets.is_floating_point()):
        raise BonsaiFormatError(path, tensor, f"scales/offsets are {p.scales.dtype}/{p.offsets.dtype}; expected floats")
    return p
