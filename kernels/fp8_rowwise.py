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
from typing import Any

import torch

from .base import FP8_MAX, BackendUnavailable, LowBitBackend, PackedLinearWeight
from .triton_dequant import SCRATCH, interpreting, tl, triton  # triton or its stand-in when missing

log = logging.getLogger(__name__)

_TINY = 1e-12  # floor for an all-zero row/token: its scale stays finite, its values stay 0
# (rows of W per program) for the weight part: one scale group of K per program, as the exact
# dequant kernel does (its shipped H100 table picked 64 rows for Klein shapes).
_W_BLOCK_N = 64
_WARPS = 8


def _prep_kernel_src(
    codes_ptr, scales_ptr, r_ptr, w_ptr, x_ptr, q_ptr, s_ptr, N, M, K, codes_stride, scales_stride, w_stride, stride_xm, stride_qm,
    W_PROGRAMS, zeros_ptr, zeros_stride, BITS: tl.constexpr, STEP_V: tl.constexpr, OFFSET_V: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr, HAS_ZERO: tl.constexpr,
):  # fmt: skip
    # One launch for both operands (a Triton launch costs ~20 us of CPU, and a 512² step is CPU
    # bound): the first W_PROGRAMS programs write the weight, one (row block, scale group) each;
    # the rest quantize one token each. W_PROGRAMS = 0 skips the weight (resident variant).
    pid = tl.program_id(0)
    if pid < W_PROGRAMS:
        E: tl.constexpr = 8 // BITS
        KB: tl.constexpr = GROUP // E  # packed bytes per scale group
        MASK: tl.constexpr = (1 << BITS) - 1
        groups = K // GROUP
        g = pid % groups
        rows = (pid // groups) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        byte = tl.load(codes_ptr + rows[:, None] * codes_stride + (g * KB + tl.arange(0, KB))[None, :], mask=rmask[:, None], other=0)
        shifts = tl.arange(0, E) * BITS
        qw = tl.reshape((byte[:, :, None].to(tl.int32) >> shifts[None, None, :]) & MASK, (BLOCK_N, GROUP))  # LSB-first along K
        # The row's largest group scale (affine layer: largest |W|, at q = 0 or the top code), recomputed by every program of the row block (its few
        # scales come from L2): nothing is prepared ahead or kept between calls, so the launch is
        # safe to record in a CUDA graph and to replay after the weights moved.
        gcols = tl.arange(0, BLOCK_G)
        sall = tl.load(
            scales_ptr + rows[:, None] * scales_stride + gcols[None, :], mask=rmask[:, None] & (gcols < groups)[None, :], other=0
        )
        if HAS_ZERO:
            zall = tl.load(
                zeros_ptr + rows[:, None] * zeros_stride + gcols[None, :], mask=rmask[:, None] & (gcols < groups)[None, :], other=0
            ).to(tl.float32)
            top = tl.abs(sall.to(tl.float32) * BITS + zall)  # the largest code is BITS (binary 1, ternary 2)
            smax = tl.maximum(tl.max(tl.maximum(tl.abs(zall), top), axis=1), 1e-12)
        else:
            smax = tl.maximum(tl.max(tl.abs(sall.to(tl.float32)), axis=1), 1e-12)
        winv = tl.math.div_rn(448.0, smax)  # IEEE, as row_scales' tensor division
        if g == 0:
            tl.store(r_ptr + rows, tl.math.div_rn(smax, 448.0), mask=rmask)  # the GEMM's per-row weight scale
        sc = tl.load(scales_ptr + rows * scales_stride + g, mask=rmask, other=0).to(tl.float32)
        if HAS_ZERO:
            # affine layer: the fp32 weight q * scale + zero, then the same row scaling
            zr = tl.load(zeros_ptr + rows * zeros_stride + g, mask=rmask, other=0).to(tl.float32)
            wf = (qw.to(tl.float32) * sc[:, None] + zr[:, None]) * winv[:, None]
        else:
            v = qw.to(tl.float32) * STEP_V + OFFSET_V  # the weight's own code map: -1, 0 or +1
            wf = v * (sc * winv)[:, None]
        w8 = wf.to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # |.| <= 448 by construction
        wcols = g * GROUP + tl.arange(0, GROUP)
        tl.store(w_ptr + rows[:, None] * w_stride + wcols[None, :], w8, mask=rmask[:, None])
    else:
        row = pid - W_PROGRAMS
        cols = tl.arange(0, BLOCK_K)  # the whole token row stays in registers: x is read once
        cmask = cols < K
        x = tl.load(x_ptr + row * stride_xm + cols, mask=cmask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)
        # IEEE division (Triton's default fp32 '/' is approximate): scales and codes match torch's
        ainv = tl.math.div_rn(448.0, amax)
        xq = tl.minimum(tl.maximum(x * ainv, -448.0), 448.0)  # x*inv may round a hair past 448
        tl.store(q_ptr + row * stride_qm + cols, xq.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=cmask)
        tl.store(s_ptr + row, tl.math.div_rn(amax, 448.0))


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> Any:
    # keyed on the interpreter flag, which triton reads when a function is wrapped
    return triton.jit(_prep_kernel_src, do_not_specialize=["N", "M", "W_PROGRAMS"])


def row_scales(weight: PackedLinearWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, inv)``, fp32 ``[N]``: ``r = max |W[n]| / 448`` (the GEMM's weight scale) and ``448 / max |W[n]|``
    (``max |W[n]|`` is the largest group scale of a canonical row; an affine row's largest ``|q * scale + zero|``)."""
    smax = weight.max_abs().amax(dim=1).clamp_min(_TINY)
    # tensor / tensor: an IEEE division on every device, as the launch's div.rn (``448 / t`` is
    # ``t.reciprocal() * 448`` in torch, and CUDA divides by a scalar through its reciprocal)
    c = torch.full_like(smax, FP8_MAX)
    return smax / c, c / smax


def prepare(
    weight: PackedLinearWeight, w_out: torch.Tensor | None, x2d: torch.Tensor, r_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch: ``w_out`` (if given, ``[N, K]`` 1-byte) gets ``e4m3(value(q) * s * inv[n])`` and
    ``r_out`` (fp32 ``[N]``, required with ``w_out``) the row scales ``r`` of :func:`row_scales`;
    ``x2d [M, K]`` becomes (e4m3 ``[M, K]``, fp32 ``[M, 1]`` scales ``amax / 448``)."""
    codes, scales, bits, group = weight.codes, weight.scales, weight.bits, weight.group_size
    n, k = weight.out_features, weight.in_features
    m = x2d.shape[0]
    if x2d.shape[1] != k:
        raise ValueError(f"fp8_rowwise: input has {x2d.shape[1]} features, the layer expects {k}")
    if w_out is not None and (w_out.shape != (n, k) or w_out.element_size() != 1):
        raise ValueError(f"fp8_rowwise: scratch {list(w_out.shape)} {w_out.dtype} does not fit a [{n}, {k}] e4m3 weight")
    if w_out is not None and (r_out is None or r_out.shape != (n,) or r_out.dtype != torch.float32):
        raise ValueError(f"fp8_rowwise: the weight's row scales need an fp32 [{n}] output")
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x2d.device)
    w_programs = triton.cdiv(n, _W_BLOCK_N) * (k // group) if w_out is not None else 0
    w = w_out.view(torch.uint8) if w_out is not None else q.view(torch.uint8)  # unused when w_programs == 0
    step, offset = weight.code_map
    r = r_out if r_out is not None else s  # unused when w_programs == 0
    zeros = getattr(weight, "zeros", None)
    zp = zeros if zeros is not None else scales  # unused without HAS_ZERO
    _kernels(interpreting())[(w_programs + m,)](
        codes, scales, r, w, x2d, q.view(torch.uint8), s, n, m, k, codes.stride(0), scales.stride(0), w.stride(0),
        x2d.stride(0), q.stride(0), w_programs, zp, zp.stride(0),
        BITS=bits, STEP_V=float(step), OFFSET_V=float(offset), GROUP=group, BLOCK_N=_W_BLOCK_N,
        BLOCK_K=triton.next_power_of_2(k), BLOCK_G=triton.next_power_of_2(k // group), HAS_ZERO=zeros is not None, num_warps=_WARPS,
    )  # fmt: skip
    return q, s


def quantize_weight(weight: PackedLinearWeight, out: torch.Tensor) -> torch.Tensor:
    """Write ``e4m3(value(q) * s * inv[n])`` for every weight into ``out`` (``[N, K]``, 1-byte dtype);
    returns the row scales ``r`` (fp32 ``[N]``)."""
    r = torch.empty(weight.out_features, dtype=torch.float32, device=out.device)
    prepare(weight, out, torch.zeros((0, weight.in_features), dtype=torch.bfloat16, device=out.device), r)
    return r


def reference_rowwise(x2d: torch.Tensor, weight: PackedLinearWeight) -> torch.Tensor:
    """What the path computes, in plain torch (fp32 accumulation): the oracle of the tests."""
    r, inv = row_scales(weight)
    w = weight.dequantize(torch.float32)
    w8 = (w * inv[:, None]).to(torch.float8_e4m3fn).float()
    xf = x2d.float()
    amax = xf.abs().amax(dim=1, keepdim=True).clamp_min(_TINY)
    c = torch.full_like(amax, FP8_MAX)  # tensor/tensor: IEEE division, as the kernel's div.rn
    sa = amax / c
    xq = (xf * (c / amax)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
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

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        n, k = weight.out_features, weight.in_features
        prep = state.get("fp8_rowwise_resident") if self.resident else None
        if self.resident and prep is None:
            w8 = torch.empty(n, k, dtype=torch.float8_e4m3fn, device=weight.codes.device)
            prep = state["fp8_rowwise_resident"] = (quantize_weight(weight, w8), w8)
        if prep is not None:
            r, w8 = prep
            xq, sa = prepare(weight, None, x2d)
        else:
            # Stateless: the launch writes this layer's weight into the shared scratch and its row
            # scales into a fresh [N] tensor (4 bytes per output row) next to the activations.
            w8 = SCRATCH.get(x2d.device, torch.float8_e4m3fn, (n, k))
            r = torch.empty(n, dtype=torch.float32, device=x2d.device)
            xq, sa = prepare(weight, w8, x2d, r)
        return _gemm(xq, sa, w8, r, x2d.dtype)


class FP8RowwiseResidentBackend(FP8RowwiseBackend):
    """:class:`FP8RowwiseBackend` with each layer's e4m3 weight kept on the GPU (no per-call unpack)."""

    name = "fp8_rowwise_resident"
    resident = True
