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
