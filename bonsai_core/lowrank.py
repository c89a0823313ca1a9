"""Unmerged low-rank (LoRA) branches on top of a packed linear.

Merging a LoRA into binary/ternary weights would destroy it, so it stays a side branch:
``y[..., off:off+n] += scale * (x @ down.T) @ up.T`` with ``scale = strength * alpha / rank``.
Branches apply in list order; ``pre_scale`` first multiplies the slice already computed (ComfyUI's
``strength_model``, which scales the weight *before* its own patch is added). A branch of rank 0
is a pure ``pre_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRankBranch:
    down: torch.Tensor  # [rank, in_features]
    up: torch.Tensor  # [n, rank]; n = out_features, or the width of the slice at ``offset``
    scale: float
    offset: int = 0  # first output feature the branch adds to (fused qkv / linear1 slices)
    pre_scale: float = 1.0  # multiplies y[..., offset:offset+n] before this branch adds to it

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def to(self, device: torch.device, dtype: torch.dtype) -> LowRankBranch:
        if all(t.device == device and t.dtype == dtype for t in (self.down, self.up)):
            return self
        return LowRankBranch(self.down.to(device, dtype), self.up.to(device, dtype), self.scale, self.offset, self.pre_scale)


def apply_low_rank(x: torch.Tensor, y: torch.Tensor, branches: list[LowRankBranch]) -> torch.Tensor:
    """Add every branch to ``y`` (output of the base layer for input ``x``) and return it."""
    for b in branches:
        b = b.to(x.device, x.dtype)
        n = b.up.shape[0]
        full = b.offset == 0 and n == y.shape[-1]
        if b.pre_scale != 1.0:
            if full:
                y = y * b.pre_scale
            else:
                y = y.clone() if y.requires_grad else y
                y[..., b.offset : b.offset + n] *= b.pre_scale
        if b.rank == 0:
            continue
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x, b.down), b.up) * b.scale
        if full:
            y = y + delta.to(y.dtype)
        else:
            y = y.clone() if y.requires_grad else y
            y[..., b.offset : b.offset + n] += delta.to(y.dtype)
    return y


# ---------------------------------------------------------------------------
# Products of factors (LoHa, LoKr) as a branch or a dense delta, whichever holds fewer numbers.
# A LoHa of ranks r1, r2 is exactly a branch of rank r1*r2 and a LoKr of factor ranks r1, r2 one of
# rank r1*r2 too; a small adapter file can ask for ranks whose factors dwarf the layer itself, so the
# caller compares ``rank * (n + k)`` with ``n * k`` and computes only the smaller form.
# ---------------------------------------------------------------------------


def factors_are_smaller(rank: int, n: int, k: int) -> bool:
    """True when a rank-``rank`` branch on an ``n x k`` slice holds no more numbers than its dense delta."""
    return rank * (n + k) <= n * k


def hadamard_factors(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [n, r1*r2], down [r1*r2, k]) with ``up @ down == (w1a @ w1b) * (w2a @ w2b)`` (Khatri-Rao products)."""
    n, k = w1a.shape[0], w1b.shape[1]
    r1, r2 = w1b.shape[0], w2b.shape[0]
    up = (w1a.unsqueeze(2) * w2a.unsqueeze(1)).reshape(n, r1 * r2)
    down = (w1b.unsqueeze(1) * w2b.unsqueeze(0)).reshape(r1 * r2, k)
    return up, down


def kron_factors(u1: torch.Tensor, v1: torch.Tensor, u2: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with ``up @ down == kron(u1 @ v1, u2 @ v2)`` (mixed-product property of the Kronecker product)."""
    return torch.kron(u1, u2), torch.kron(v1, v2)


def thin_factors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full ``a x b`` matrix as (u, v) with ``u @ v == matrix`` and inner size min(a, b) (an identity on one side)."""
    a, b = matrix.shape
    if a <= b:
        return torch.eye(a, dtype=matrix.dtype, device=matrix.device), matrix
    return matrix, torch.eye(b, dtype=matrix.dtype, device=matrix.device)
