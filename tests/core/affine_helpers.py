"""Helpers for the affine-pack tests: break the exact Bonsai relation in a released-layout copy the
way real files may (one ulp off, scale 0 with bias -0.0, subnormal scales) and compute what the
file's own runtime computes, ``W = q * scale + zero``, independently of the pack's code."""

from __future__ import annotations

import numpy as np
import torch

# diffusers linear -> (codes leaf, scales leaf, zeros leaf) per layout
LEAVES = {"gemlite": ("W_q", "scales", "zeros"), "mlx": ("weight", "scales", "biases")}


def next_ulp(t: torch.Tensor) -> torch.Tensor:
    """``t`` moved one unit in the last place away from zero, in its own dtype (fp32 or bf16)."""
    if t.dtype == torch.float32:
        return (t.view(torch.int32) + 1).view(torch.float32)
    assert t.dtype == torch.bfloat16
    return (t.view(torch.int16) + 1).view(torch.bfloat16)


def break_relation(scales: torch.Tensor, zeros: torch.Tensor, gen: torch.Generator, fraction: float = 0.01) -> dict[str, int]:
    """Edit the ``[rows, groups]`` views ``scales``/``zeros`` in place: ``fraction`` of the groups get a
    scale one ulp off the relation, then one group scale 0 with zero -0.0, one scale 0 with a
    non-zero zero, and one subnormal scale (fp32: 1e-40; bf16: the smallest subnormal, 2^-133).
    Returns how many groups no longer hold the exact relation."""
    n = scales.numel()
    flat_s, flat_z = scales.reshape(-1), zeros.reshape(-1)
    pick = torch.randperm(n, generator=gen)[: max(1, round(n * fraction)) + 3]
    ulp, special = pick[:-3], pick[-3:]
    flat_s[ulp] = next_ulp(flat_s[ulp])
    flat_s[special[0]], flat_z[special[0]] = 0.0, -0.0  # binary: 0 == 2 * 0.0, so this group stays exact
    flat_s[special[1]] = 0.0  # zero kept: q * 0 + zero, a constant group
    tiny = 1e-40 if scales.dtype == torch.float32 else torch.tensor(2.0**-133).to(torch.bfloat16).item()
    flat_s[special[2]] = tiny
    assert scales.dtype == torch.float32 or (flat_s[special[2]].float() > 0 and flat_s[special[2]].float() < 2.0**-126)
    return len(ulp) + 2


def unpack_lsb(words: np.ndarray, bits: int, count: int, axis: int) -> np.ndarray:
    """Codes of little-endian words packed LSB-first along ``axis`` (0: gemlite's K rows, 1: MLX's
    words per row), ``count`` codes along that axis. Plain numpy, independent of bonsai_core."""
    b = np.ascontiguousarray(words).view(np.uint8)
    if axis == 0:
        b = np.ascontiguousarray(np.ascontiguousarray(words).T).view(np.uint8)  # [N, K*bits/8]
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    q = (b[..., None] >> shifts) & ((1 << bits) - 1)
    q = q.reshape(b.shape[0], -1)[:, :count]
    return q  # [N, K]


def file_formula(q: np.ndarray, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``q * scale + zero`` per 128-group in float32 (``scale``/``zero`` ``[N, K/128]``)."""
    s = scale.float().repeat_interleave(128, 1)
    z = zero.float().repeat_interleave(128, 1)
    return torch.from_numpy(q.astype(np.float32)) * s + z
