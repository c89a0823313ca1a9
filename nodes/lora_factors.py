"""Patch tensors of one adapter -> the factors of an exact branch, with every shape checked first.

Pure functions on ComfyUI's adapter weight tuples (``LoRAAdapter.weights`` etc.); no ComfyUI import.
Each returns (up [n, r], down [r, k], factor) or None when the dense delta is the smaller exact form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..bonsai_core.lowrank import factors_are_smaller, hadamard_factors, kron_factors, thin_factors


class BonsaiLoraError(ValueError):
    """A patch that cannot be applied to a packed binary/ternary layer without merging."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(
            f"LoRA patch on Bonsai layer {key!r}: {message}. Bonsai layers stay binary/ternary, so only additive patches "
            "(LoRA/LoCon, LoHa, LoKr, diff) can be applied, as unmerged branches. Remove this LoRA from the workflow "
            "or use it with a dense FLUX.2 Klein model."
        )
        self.key = key


class ShapeMismatch(Exception):
    """The patch does not fit the layer: stock ComfyUI logs this and leaves the weight alone; so do we."""


def lora_factors(key: str, weights: Sequence[Any], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``LoRAAdapter.weights = (up, down, alpha, mid, dora_scale, reshape)`` -> (up [n,r], down [r,k], alpha/rank)."""
    up, down, alpha, mid, dora_scale, reshape = weights
    if dora_scale is not None:
        raise BonsaiLoraError(key, "DoRA (dora_scale) renormalizes the merged weight, which needs the dense base weight")
    if reshape is not None and tuple(int(v) for v in reshape) != (n, k):
        raise BonsaiLoraError(key, f"reshape_weight {list(reshape)} would resize the layer ({n}x{k})")
    rank = down.shape[0]
    # ComfyUI divides alpha by the rank of ``down`` before folding in ``mid``; so do we.
    factor = float(alpha) / rank if alpha is not None else 1.0
    up = up.reshape(up.shape[0], -1)
    down = down.reshape(rank, -1)
    if mid is not None:
        if mid.dim() not in (2, 4) or (mid.dim() == 4 and tuple(mid.shape[2:]) != (1, 1)):
            raise BonsaiLoraError(key, f"lora_mid of shape {list(mid.shape)} is a convolution factor, not a linear one")
        down = mid.reshape(mid.shape[0], mid.shape[1]).float() @ down.float()  # fold in fp32, as ComfyUI merges
    if up.shape[0] != n or down.shape[1] != k or up.shape[1] != down.shape[0]:
        raise ShapeMismatch(f"lora up {list(up.shape)} x down {list(down.shape)} does not fit a {n}x{k} slice")
    return up, down, factor


_DORA = "DoRA (dora_scale) renormalizes the merged weight, which needs the dense base weight"
_TUCKER = "Tucker factors (hada_t1/t2, lokr_t2) belong to convolutions; Bonsai packed layers are linear"


def loha_factors(key: str, weights: Sequence[Any], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """LoHa ``(w1a, w1b, alpha, w2a, w2b, t1, t2, dora)``: (w1a@w1b)*(w2a@w2b) = Khatri-Rao(w1a,w2a) @ Khatri-Rao(w1b,w2b).

    That branch has rank r1*r2, which a small file can make far larger than the layer (ranks 512 and 512
    on a 3072-wide layer: 6 GiB of factors for 36 MiB of weight). Returns the branch when it holds no
    more numbers than the dense ``n x k`` delta, else None (the caller computes the dense delta).
    Shapes are checked before anything is multiplied.
    """
    w1a, w1b, alpha, w2a, w2b, t1, t2, dora_scale = weights
    if dora_scale is not None:
        raise BonsaiLoraError(key, _DORA)
    if t1 is not None or t2 is not None:
        raise BonsaiLoraError(key, _TUCKER)
    if any(t.dim() != 2 for t in (w1a, w2a)):
        raise ShapeMismatch(f"LoHa factors {[list(t.shape) for t in (w1a, w2a)]} are not matrices")
    w1b, w2b = w1b.reshape(w1b.shape[0], -1), w2b.reshape(w2b.shape[0], -1)
    if w1a.shape != (n, w1b.shape[0]) or w2a.shape != (n, w2b.shape[0]) or w1b.shape[1] != k or w2b.shape[1] != k:
        raise ShapeMismatch(f"LoHa factors {[list(t.shape) for t in (w1a, w1b, w2a, w2b)]} do not fit a {n}x{k} slice")
    r1, r2 = w1b.shape[0], w2b.shape[0]
    if not factors_are_smaller(r1 * r2, n, k):
        return None
    up, down = hadamard_factors(*(t.float() for t in (w1a, w1b, w2a, w2b)))
    factor = float(alpha) / r1 if alpha is not None else 1.0
    return up, down, factor


def _kron_part(w: torch.Tensor | None, wa: torch.Tensor | None, wb: torch.Tensor | None) -> tuple[int, int, int] | None:
    """One LoKr factor (full ``w`` or ``wa @ wb``) -> (rows, cols, inner rank); None when it is incomplete or not 2-D."""
    if w is not None:
        return (int(w.shape[0]), int(w.shape[1]), min(int(w.shape[0]), int(w.shape[1]))) if w.dim() == 2 else None
    if wa is None or wb is None or wa.dim() != 2 or wb.dim() != 2 or wa.shape[1] != wb.shape[0]:
        return None
    rows, cols = int(wa.shape[0]), int(wb.shape[1])
    return rows, cols, min(int(wa.shape[1]), rows, cols)


def _kron_thin(w: torch.Tensor | None, wa: torch.Tensor | None, wb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with u @ v the LoKr factor and the inner size :func:`_kron_part` reported."""
    if w is None and wa.shape[1] <= min(wa.shape[0], wb.shape[1]):
        return wa.float(), wb.float()
    return thin_factors(w.float() if w is not None else wa.float() @ wb.float())


def lokr_factors(key: str, weights: Sequence[Any], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """LoKr ``(w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora)``: kron(w1, w2) as a branch of rank r1*r2.

    kron(u1 @ v1, u2 @ v2) == kron(u1, u2) @ kron(v1, v2). Returns that branch when it holds no more numbers
    than the dense delta, else None (the caller computes the dense delta, one ``n x k`` slice). The factors'
    shapes are checked first: ComfyUI forms ``kron(w1, w2)`` before reshaping it, which for mismatched
    factors is as large as their shapes multiply.
    """
    w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora_scale = weights
    if dora_scale is not None:
        raise BonsaiLoraError(key, _DORA)
    if t2 is not None:
        raise BonsaiLoraError(key, _TUCKER)
    p1, p2 = _kron_part(w1, w1_a, w1_b), _kron_part(w2, w2_a, w2_b)
    if p1 is None or p2 is None or p1[0] * p1[1] * p2[0] * p2[1] != n * k:
        raise ShapeMismatch(
            f"LoKr factors {[None if t is None else list(t.shape) for t in weights[:2] + weights[3:7]]} do not fit a {n}x{k} slice"
        )
    if p1[0] * p2[0] != n or not factors_are_smaller(p1[2] * p2[2], n, k):
        return None  # a reshaped Kronecker product (as ComfyUI allows) or a large rank: the dense delta
    u1, v1 = _kron_thin(w1, w1_a, w1_b)
    u2, v2 = _kron_thin(w2, w2_a, w2_b)
    up, down = kron_factors(u1, v1, u2, v2)
    dim = w2_b.shape[0] if w2 is None else (w1_b.shape[0] if w1 is None else None)  # as ComfyUI picks alpha's divisor
    factor = float(alpha) / dim if alpha is not None and dim is not None else 1.0
    return up, down, factor
