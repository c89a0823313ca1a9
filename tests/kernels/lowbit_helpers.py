"""Random canonical packed weights and the float64 reference every backend is checked against."""

from __future__ import annotations

import torch

from bonsai_core.packing import dequantize, pack_codes

# |y - ref| <= TOL[dtype] * (|x| @ |W|.T) + ATOL: the natural scale of a dot product's rounding
# error (cancellation makes |y| itself a bad yardstick). Sources, per output dtype:
#   float32: accumulation order only (2^-24 per op, K <= 12288 terms)            -> 1e-5
#   float16: one output rounding (2^-11) + fp32 accumulation                      -> 1e-3
#   bfloat16: one output rounding (2^-8) + a bf16-rounded scale (2^-9, torch ref) -> 8e-3
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
ATOL = 1e-6
VARIANTS = {"binary": 1, "ternary": 2}


def random_packed(n: int, k: int, bits: int, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical (codes, fp16 scales) with every valid code used (ternary: 0, 1, 2 only)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 if bits == 1 else 3, (n, k), generator=g, dtype=torch.uint8)
    codes = pack_codes(q, bits)
    scales = (torch.rand(n, k // 128, generator=g) * 0.05 + 0.002).half()
    return codes.to(device), scales.to(device)


def reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ W.T, |x| @ |W|.T) in float64 from the exact dequantized weight."""
    w = dequantize(codes.cpu(), scales.cpu(), bits, torch.float64)
    xd = x.detach().cpu().double().reshape(-1, w.shape[1])
    return xd @ w.T, xd.abs() @ w.abs().T


def assert_close_to_reference(y: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, tol: float) -> float:
    """Check y against the float64 reference; return the worst error in units of the bound."""
    ref, mag = reference(x, codes, scales, bits)
    err = (y.detach().cpu().double().reshape(ref.shape) - ref).abs()
    bound = tol * mag + ATOL
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"error {float(err.max()):.3g} exceeds the bound (worst ratio {worst:.3g}, tol {tol})"
    return worst
