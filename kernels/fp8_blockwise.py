"""FP8 path for Hopper and newer: exact e4m3 weights, blockwise-scaled activations.

Binary/ternary weights are ``{-1, 0, +1} * s`` with one ``s`` per (row, 128-K group): the values
are exact in e4m3 and the scales are DeepSeek-style 1x128 weight-block scales. Activations are
quantized on the fly per (token, 128-K block) to e4m3 with an fp32 scale ``amax / 448``; the
product of the two blockwise-scaled operands is accumulated in fp32. The only loss is the
rounding of activations to 3 mantissa bits (about 2-3 % relative error per layer), so this
path is *not* exact (``exact = False``): the runtime's selection only picks it when asked (``fp8`` /
``auto-fp8``) because its measured fidelity is reported separately in docs/benchmarks.

Implementations (chosen per shape and token bucket through the context's chooser: the per-GPU
measured table, namespace ``fp8``, else the static preference of :meth:`FP8BlockwiseBackend.variants`):

* ``tri-*``: one Triton GEMM that reads the packed codes directly (no scratch at all) or an e4m3
  scratch, and either pre-quantized activations or bf16 activations quantized in its prologue
  (no extra pass over ``x``). The K-group scales are applied per 128-K step in the main loop.
* ``sm``: ``torch._scaled_mm`` with the 1x128 x 1x128 recipe (SM90, cuBLAS >= 12.9), fed by the
  Triton activation quantizer and an e4m3 scratch of the weight values.
"""

# No ``from __future__ import annotations``: triton (its interpreter in particular) needs the
# real ``tl.constexpr`` objects in kernel signatures, not strings.
import logging
from functools import lru_cache
from typing import Any

import torch

from .base import FP8_MAX, BackendUnavailable, LowBitBackend, PackedLinearWeight
from .triton_dequant import SCRATCH, dequant_linear, interpreting, tl, triton, unpack_into  # triton or its stand-in when missing

log = logging.getLogger(__name__)

# (BLOCK_M, BLOCK_N, num_warps, num_stages): a few shapes that suit wgmma on Hopper.
CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "m128n128w8s3": (128, 128, 8, 3),
    "m128n256w8s3": (128, 256, 8, 3),
    "m64n128w4s4": (64, 128, 4, 4),
    "m128n128w4s4": (128, 128, 4, 4),
}
# impl -> (activation quantized inside the GEMM, weights read from packed codes)
TRITON_IMPLS: dict[str, tuple[bool, bool]] = {
    "tri-fq-codes": (True, True),
    "tri-fq-scratch": (True, False),
    "tri-codes": (False, True),
    "tri-scratch": (False, False),
}
# Measured on an H100 (docs/benchmarks/model-h100-linears-run1.json): cuBLASLt's blockwise GEMM
# ("sm") won every shape at M = 4608 and the e4m3-scratch Triton GEMM some at M = 1536; the
# prologue-quantizing and codes-reading Triton variants were 2-6x slower. Only these are tried.
ACTIVE_VARIANTS: list[str] = ["sm", "tri-scratch:m64n128w4s4", "tri-scratch:m128n128w8s3"]
# The shipped H100 table: cuBLASLt's blockwise GEMM won every Klein shape from M = 2048 tokens on
# (a 512^2 image is 1024 image tokens + text), the 64x128 Triton GEMM most buckets below.
SM_PREFERRED_FROM_M = 2048
SM_M_MULTIPLE = 128  # cuBLASLt refused the 1x128 recipe at M = 333 (CUBLAS_STATUS_NOT_SUPPORTED)


def _act_quant_src(x_ptr, q_ptr, s_ptr, M, stride_xm, stride_qm, stride_sm, stride_sg, BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = g * GROUP + tl.arange(0, GROUP)
    rmask = rows < M
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 448.0
    q = (x / s[:, None]).to(tl.float8e4nv)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=rmask[:, None])
    tl.store(s_ptr + rows * stride_sm + g * stride_sg, s, mask=rmask)


def _gemm_src(
    a_ptr, as_ptr, b_ptr, ws_ptr, c_ptr, M, N, K,
    stride_am, stride_asm, stride_asg, stride_bn, stride_wsn, stride_cm,
    BITS: tl.constexpr, STEP_V: tl.constexpr, OFFSET_V: tl.constexpr, GROUP: tl.constexpr,
    A_QUANT: tl.constexpr, B_CODES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, STATIC_G: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped launch order: GROUP_M row-tiles share each column tile of W while it is in L2
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % in_group) % size_m)
    pid_n = (pid % in_group) // size_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    offs_k = tl.arange(0, GROUP)
    E: tl.constexpr = 8 // BITS
    KB: tl.constexpr = GROUP // E
    MASK: tl.constexpr = (1 << BITS) - 1
    shifts = tl.arange(0, E) * BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # STATIC_G > 0 only in the interpreter, whose range() cannot take a runtime int (numpy >= 2.4)
    for g in range(0, STATIC_G if STATIC_G > 0 else K // GROUP):
        if A_QUANT:
            a = tl.load(a_ptr + rows[:, None] * stride_am + (g * GROUP + offs_k)[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
            sa = tl.maximum(tl.max(tl.abs(a), axis=1), 1e-12) / 448.0
            a8 = (a / sa[:, None]).to(tl.float8e4nv)
        else:
            a8 = tl.load(a_ptr + rows[:, None] * stride_am + (g * GROUP + offs_k)[None, :], mask=rmask[:, None], other=0.0)
            sa = tl.load(as_ptr + rows * stride_asm + g * stride_asg, mask=rmask, other=0.0)
        if B_CODES:
            byte = tl.load(b_ptr + cols[:, None] * stride_bn + (g * KB + tl.arange(0, KB))[None, :], mask=cmask[:, None], other=0)
            q = tl.reshape((byte[:, :, None].to(tl.int32) >> shifts[None, None, :]) & MASK, (BLOCK_N, GROUP))
            b8 = (q.to(tl.float32) * STEP_V + OFFSET_V).to(tl.float8e4nv)  # the weight's code map, exact in e4m3
        else:
            b8 = tl.load(b_ptr + cols[:, None] * stride_bn + (g * GROUP + offs_k)[None, :], mask=cmask[:, None], other=0.0)
        sb = tl.load(ws_ptr + cols * stride_wsn + g, mask=cmask, other=0.0).to(tl.float32)
        acc += tl.dot(a8, tl.trans(b8)) * (sa[:, None] * sb[None, :])
    tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :], acc.to(c_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    # keyed on the interpreter flag, which triton reads when a function is wrapped
    return (
        triton.jit(_act_quant_src, do_not_specialize=["M"]),
        triton.jit(_gemm_src, do_not_specialize=["M"]),
    )


def quantize_activations(x2d: torch.Tensor, group: int, *, scales_mk_major: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> (e4m3 ``[M, K]``, fp32 scales ``[M, K/group]``), one scale per (token, K block)
    of the weight's group size (the blockwise scheme needs both operands' blocks to coincide).

    ``scales_mk_major=False`` stores the scales outer-dim-major (stride ``(1, M)``), the layout
    ``torch._scaled_mm``'s 1x128 recipe wants for the A operand.
    """
    m, k = x2d.shape
    g = k // group
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    s = (
        torch.empty((m, g), dtype=torch.float32, device=x2d.device)
        if scales_mk_major
        else torch.empty((g, m), dtype=torch.float32, device=x2d.device).t()
    )
    act, _ = _kernels(interpreting())
    block_m = 32
    act[(triton.cdiv(m, block_m), g)](x2d, q, s, m, x2d.stride(0), q.stride(0), s.stride(0), s.stride(1), BLOCK_M=block_m, GROUP=group, num_warps=4)
    return q, s


def reference_fp8_linear(x2d: torch.Tensor, weight: PackedLinearWeight) -> torch.Tensor:
    """What every FP8 variant computes, in plain torch (float32 accumulation): the oracle of the tests."""
    m, k = x2d.shape
    group = weight.group_size
    xf = x2d.float().view(m, k // group, group)
    sa = xf.abs().amax(-1).clamp_min(1e-12) / FP8_MAX
    xq = (xf / sa.unsqueeze(-1)).to(torch.float8_e4m3fn).float() * sa.unsqueeze(-1)
    return (xq.view(m, k) @ weight.dequantize(torch.float32).t()).to(x2d.dtype)


def run_variant(variant: str, x2d: torch.Tensor, weight: PackedLinearWeight) -> torch.Tensor:
    """Run one named implementation (``tri-...:<config>`` or ``sm``)."""
    m, k = x2d.shape
    n, group = weight.out_features, weight.group_size
    codes, scales = weight.codes, weight.scales
    out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    if variant == "sm":
        xq, sa = quantize_activations(x2d, group, scales_mk_major=False)
        w8 = unpack_into(weight, SCRATCH.get(x2d.device, torch.uint8, (n, k)), fp8_values=True).view(torch.float8_e4m3fn)
        sb = scales.float().t().contiguous()  # (K/128, N) row-major: the layout cuBLASLt accepts for B
        return torch._scaled_mm(xq, w8.t(), scale_a=sa, scale_b=sb, out_dtype=x2d.dtype)
    impl, _, cfg = variant.partition(":")
    a_quant, b_codes = TRITON_IMPLS[impl]
    block_m, block_n, warps, stages = CONFIGS[cfg]
    if a_quant:
        a, sa = x2d, x2d  # sa unused: the prologue computes it
        s_strides = (0, 0)
    else:
        a, sa = quantize_activations(x2d, group)
        s_strides = (sa.stride(0), sa.stride(1))
    if b_codes:
        b = codes
    else:
        b = unpack_into(weight, SCRATCH.get(x2d.device, torch.uint8, (n, k)), fp8_values=True).view(torch.float8_e4m3fn)
    _, gemm = _kernels(interpreting())
    step, offset = weight.code_map
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    gemm[grid](
        a, sa, b, scales, out, m, n, k,
        a.stride(0), s_strides[0], s_strides[1], b.stride(0), scales.stride(0), out.stride(0),
        BITS=weight.bits, STEP_V=float(step), OFFSET_V=float(offset), GROUP=group, A_QUANT=a_quant, B_CODES=b_codes,
        BLOCK_M=block_m, BLOCK_N=block_n, GROUP_M=8, STATIC_G=k // group if interpreting() else 0, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def scaled_mm_blockwise_supported(device: torch.device) -> bool:
    """SM90 only (hard error elsewhere) and a cuBLAS >= 12.9 build (pytorch#182909)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return False
    cuda = torch.version.cuda or "0.0"
    major, minor = (int(v) for v in cuda.split(".")[:2])
    return (major, minor) >= (12, 9)


class FP8BlockwiseBackend(LowBitBackend):
    """Blockwise FP8 (e4m3 activations per 1x128 block, exact e4m3 weights with g128 scales)."""

    name = "fp8"
    exact = False

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if bits not in (1, 2):
            raise BackendUnavailable(f"fp8: bits must be 1 or 2, got {bits}")
        if triton is None:
            raise BackendUnavailable("fp8: triton is not installed")
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise BackendUnavailable(f"fp8: activation dtype {dtype} is not a float type")
        if device.type == "cpu" and interpreting():
            return
        if device.type != "cuda" or torch.version.hip is not None:
            raise BackendUnavailable(f"fp8: needs an NVIDIA GPU, got {device.type}")
        if not torch.cuda.is_available():
            raise BackendUnavailable("fp8: torch reports no usable CUDA device")
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise BackendUnavailable(
                f"fp8: needs FP8 tensor cores (compute capability >= 8.9), {torch.cuda.get_device_name(device)} has none"
            )

    def variants(self, device: torch.device, m: int | None = None) -> list[str]:
        """The implementations that can run ``m`` tokens here, static preference first."""
        out = [v for v in ACTIVE_VARIANTS if v != "sm"]
        if "sm" in ACTIVE_VARIANTS and scaled_mm_blockwise_supported(device) and (m is None or m % SM_M_MULTIPLE == 0):
            if m is None or m >= SM_PREFERRED_FROM_M:
                out.insert(0, "sm")
            else:
                out.append("sm")
        return out

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        if getattr(weight, "zeros", None) is not None:
            # an affine layer has no exact e4m3 {-1, 0, +1} values for the g128 scales to multiply:
            # its product goes through the exact dense path instead (same formula, never less exact)
            return dequant_linear(x2d, weight)
        m = x2d.shape[0]
        variants = self.variants(x2d.device, m)
        if len(variants) == 1:
            return run_variant(variants[0], x2d, weight)
        key = ("fp8_variant", x2d.dtype, (m - 1).bit_length())  # one choice per power-of-two token bucket
        chosen = state.get(key)
        if chosen is None:
            cands = {v: (lambda v=v: run_variant(v, x2d, weight)) for v in variants}
            chosen = self.context.choose("fp8", weight, m, x2d.dtype, cands, x2d.device)
            state[key] = chosen
        return run_variant(chosen, x2d, weight)
