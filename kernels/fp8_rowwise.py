"""FP8 rowwise fast path: per-row e4m3 weights, per-token e4m3 activations, one cuBLASLt/CUTLASS
rowwise-scaled GEMM (``torch._scaled_mm`` with ``[M, 1]`` x ``[1, N]`` fp32 scales).

Why this shape: the fastest FP8 tensor-core GEMMs take one scale per output row of each operand,
not one per 128-K block (the blockwise recipe measured 0.95-0.97x of bf16 at 1024² on an H100,
while stock ComfyUI's per-tensor FP8 reached ~0.81x). A binary/ternary weight row is
``c[k] * s[k // 128]`` with ``c`` in {-1, 0, +1}; dividing by the row's largest group scale
leaves values ``c * s_g / s_max`` in [-1, 1] that e4m3 holds to 3 mantissa bits (the same
relative rounding stock FP8 applies to every weight), so the weight becomes
``W ~= r[n] * W8[n, k]`` with ``r[n] = s_max / 448``.

Per call (shared scratch, the default ``fp8_rowwise``):
1. one Triton kernel writes ``W8`` for this layer into a single e4m3 scratch shared by every layer
   (resident memory stays packed; the scratch is the largest layer, N*K bytes);
2. one Triton kernel quantizes the activations per token (``amax / 448``, round to nearest even);
3. ``torch._scaled_mm`` accumulates in fp32 and applies ``a[m] * r[n]`` in its epilogue.

``fp8_rowwise_resident`` keeps ``W8`` in the layer's state instead (about 1 byte per weight on the
GPU, like a stock FP8 checkpoint) and skips step 1: for cards with the memory to spare.

Neither is exact (activations and the per-group scale ratios are rounded to e4m3), so the
runtime only uses them when asked for; their fidelity is measured against the exact path in
docs/benchmarks.
"""

# No ``from __future__ import annotations``: triton (its interpreter in particular) needs the
# real ``tl.constexpr`` objects in kernel signatures, not strings.
import logging
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch

try:  # optional: the module must import without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = SimpleNamespace(constexpr=int)  # lets the kernel signatures below be evaluated

from .base import BackendUnavailable, LowBitBackend, PackedLinearWeight
from .triton_dequant import SCRATCH, interpreting

log = logging.getLogger(__name__)

FP8_MAX = 448.0
_TINY = 1e-12  # floor for an all-zero row/token: its scale stays finite, its values stay 0
# (rows of W per program, warps) for the weight kernel; one scale group of K per program, as the
# exact dequant kernel does (its shipped H100 table picked 64 rows / 4 warps for Klein shapes).
_W_BLOCK_N, _W_WARPS = 64, 4
# activation kernel: rows (tokens) per program and K-chunk; a token row is read twice (amax,
# then quantize), the second time from L1/L2.
_A_BLOCK_M, _A_BLOCK_K, _A_WARPS = 4, 512, 4


def _weight_kernel_src(
    codes_ptr, scales_ptr, inv_ptr, out_ptr, N, codes_stride, scales_stride, out_stride,
    BITS: tl.constexpr, STEP_V: tl.constexpr, OFFSET_V: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    E: tl.constexpr = 8 // BITS
    KB: tl.constexpr = GROUP // E  # packed bytes per scale group
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    byte = tl.load(codes_ptr + rows[:, None] * codes_stride + (g * KB + tl.arange(0, KB))[None, :], mask=rmask[:, None], other=0)
    shifts = tl.arange(0, E) * BITS
    q = tl.reshape((byte[:, :, None].to(tl.int32) >> shifts[None, None, :]) & MASK, (BLOCK_N, GROUP))  # LSB-first along K
    v = q.to(tl.float32) * STEP_V + OFFSET_V  # the weight's own code map: -1, 0 or +1
    s = tl.load(scales_ptr + rows * scales_stride + g, mask=rmask, other=0).to(tl.float32)
    inv = tl.load(inv_ptr + rows, mask=rmask, other=0.0)
    w8 = (v * (s * inv)[:, None]).to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # |.| <= 448 by construction
    cols = g * GROUP + tl.arange(0, GROUP)
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], w8, mask=rmask[:, None])


def _act_kernel_src(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, NK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(NK):
        cols = i * BLOCK_K + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale = tl.maximum(amax, 1e-12) / 448.0
    inv = 448.0 / tl.maximum(amax, 1e-12)
    for i in range(NK):
        cols = i * BLOCK_K + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x * inv[:, None], -448.0), 448.0)  # x*inv may round a hair past 448
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=m)
    tl.store(s_ptr + rows, scale, mask=rmask)


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    # keyed on the interpreter flag, which triton reads when a function is wrapped
    return triton.jit(_weight_kernel_src, do_not_specialize=["N"]), triton.jit(_act_kernel_src, do_not_specialize=["M"])


def row_scales(weight: PackedLinearWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, inv)``, fp32 ``[N]``: ``r = max_g |s| / 448`` (the GEMM's weight scale) and ``448 / max_g |s|``."""
    smax = weight.scales.float().abs().amax(dim=1).clamp_min(_TINY)
    return smax / FP8_MAX, FP8_MAX / smax


def quantize_weight(weight: PackedLinearWeight, inv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``e4m3(value(q) * s * inv[n])`` for every weight into ``out`` (``[N, K]``, 1-byte dtype)."""
    codes, scales, bits, group = weight.codes, weight.scales, weight.bits, weight.group_size
    n, k = weight.out_features, weight.in_features
    if out.shape != (n, k) or out.element_size() != 1:
        raise ValueError(f"fp8_rowwise: scratch {list(out.shape)} {out.dtype} does not fit a [{n}, {k}] e4m3 weight")
    step, offset = weight.code_map
    wk, _ = _kernels(interpreting())
    wk[(triton.cdiv(n, _W_BLOCK_N), k // group)](
        codes, scales, inv, out.view(torch.uint8), n, codes.stride(0), scales.stride(0), out.stride(0),
        BITS=bits, STEP_V=float(step), OFFSET_V=float(offset), GROUP=group, BLOCK_N=_W_BLOCK_N, num_warps=_W_WARPS,
    )  # fmt: skip
    return out


def quantize_activations(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> (e4m3 ``[M, K]``, fp32 ``[M, 1]`` scales ``amax / 448``), one scale per token."""
    m, k = x2d.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x2d.device)
    _, ak = _kernels(interpreting())
    ak[(triton.cdiv(m, _A_BLOCK_M),)](
        x2d, q.view(torch.uint8), s, m, k, x2d.stride(0), q.stride(0),
        BLOCK_M=_A_BLOCK_M, BLOCK_K=_A_BLOCK_K, NK=triton.cdiv(k, _A_BLOCK_K), num_warps=_A_WARPS,
    )  # fmt: skip
    return q, s


def reference_rowwise(x2d: torch.Tensor, weight: PackedLinearWeight) -> torch.Tensor:
    """What the path computes, in plain torch (fp32 accumulation): the oracle of the tests."""
    r, inv = row_scales(weight)
    w = weight.dequantize(torch.float32)
    w8 = (w * inv[:, None]).to(torch.float8_e4m3fn).float()
    xf = x2d.float()
    amax = xf.abs().amax(dim=1, keepdim=True).clamp_min(_TINY)
    sa = amax / FP8_MAX
    xq = (xf * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    return ((xq * sa) @ (w8 * r[:, None]).t()).to(x2d.dtype)


def _gemm(xq: torch.Tensor, sa: torch.Tensor, w8: torch.Tensor, r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if xq.device.type != "cuda":
        # the interpreter's CPU run (tests): the same products in fp32
        return ((xq.float() * sa) @ (w8.float() * r[:, None]).t()).to(dtype)
    # rowwise scaling wants a bf16 output; every GPU with FP8 tensor cores computes in bf16 anyway
    y = torch._scaled_mm(xq, w8.t(), scale_a=sa, scale_b=r.view(1, -1), out_dtype=torch.bfloat16)
    return y if dtype == torch.bfloat16 else y.to(dtype)


class FP8RowwiseBackend(LowBitBackend):
    """Per-row e4m3 weights in one shared scratch + per-token e4m3 activations + rowwise ``_scaled_mm``."""

    name = "fp8_rowwise"
    exact = False
    resident = False

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if bits not in (1, 2):
            raise BackendUnavailable(f"{self.name}: bits must be 1 or 2, got {bits}")
        if triton is None:
            raise BackendUnavailable(f"{self.name}: triton is not installed")
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise BackendUnavailable(f"{self.name}: activation dtype {dtype} is not a float type")
        if device.type == "cpu" and interpreting():
            return
        if device.type != "cuda" or torch.version.hip is not None:
            raise BackendUnavailable(f"{self.name}: needs an NVIDIA GPU, got {device.type}")
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise BackendUnavailable(
                f"{self.name}: needs FP8 tensor cores (compute capability >= 8.9), {torch.cuda.get_device_name(device)} has none"
            )

    def _prepared(self, weight: PackedLinearWeight, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prep = state.get("fp8_rowwise")
        if prep is None:
            r, inv = row_scales(weight)
            w8 = None
            if self.resident:
                w8 = quantize_weight(weight, inv, torch.empty(weight.out_features, weight.in_features, dtype=torch.float8_e4m3fn, device=weight.codes.device))
            prep = (r, inv, w8)
            state["fp8_rowwise"] = prep
        return prep

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        r, inv, w8 = self._prepared(weight, state)
        if w8 is None:
            w8 = quantize_weight(weight, inv, SCRATCH.get(x2d.device, torch.float8_e4m3fn, (weight.out_features, weight.in_features)))
        xq, sa = quantize_activations(x2d)
        return _gemm(xq, sa, w8, r, x2d.dtype)


class FP8RowwiseResidentBackend(FP8RowwiseBackend):
    """:class:`FP8RowwiseBackend` with each layer's e4m3 weight kept on the GPU (no per-call unpack)."""

    name = "fp8_rowwise_resident"
    resident = True
