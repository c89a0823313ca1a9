"""Exact fast path: one Triton kernel unpacks canonical codes + g128 scales straight into a
reused dense scratch ``[N, K]`` in the compute dtype, then cuBLAS does ``x @ W.T``.

Why: at Klein's token counts (M = 1.5k-18k) the matmul is compute-bound, so weight-only
low-bit GEMMs lose to cuBLAS (docs/benchmarks/linear-h100.md). Writing the dense weight once
per call costs ~2 bytes/weight of bandwidth (~60 us for the largest layer on an H100), far less
than what a slower GEMM loses. Only one scratch exists per (device, dtype), sized to the largest
layer seen, shared by every layer: resident memory stays packed.

The result is bit-exact with the weight object's ``dequantize`` in the same dtype: the kernel
evaluates the weight's own ``code_map`` (value = q * step + offset, in {-1, 0, +1}), the scale is
rounded to the compute dtype first (as ``.to(dtype)`` does), and the product of the two is exact.
"""

# No ``from __future__ import annotations``: triton (its interpreter in particular) needs the
# real ``tl.constexpr`` objects in kernel signatures, not strings.
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch

try:  # optional: the module must import without triton (the backend then reports unavailable)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = SimpleNamespace(constexpr=int)  # lets the kernel signatures below be evaluated

from .base import BackendUnavailable, LowBitBackend, PackedLinearWeight

log = logging.getLogger(__name__)

# (rows of W per program, warps); one scale group of K-columns per program keeps one scale per
# row. Run 1 on an H100 reached only ~0.9 TB/s with 32 rows / 4 warps; the shipped H100 table
# (namespace "dequant") picked 64 rows / 4 warps for most Klein shapes, so that is the static
# choice (first) when no measured entry exists.
DEQUANT_CONFIGS: dict[str, tuple[int, int]] = {"n64w4": (64, 4), "n32w4": (32, 4), "n128w8": (128, 8), "n256w8": (256, 8)}


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """Triton's CPU interpreter (``TRITON_INTERPRET=1``): lets CI check the kernels bit-exactly."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dequant_kernel_src(
    codes_ptr, scales_ptr, out_ptr, N, codes_stride, scales_stride, out_stride, zeros_ptr, zeros_stride,
    BITS: tl.constexpr, STEP_V: tl.constexpr, OFFSET_V: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr, OUT_FP8: tl.constexpr, ROUND_BF16: tl.constexpr, HAS_ZERO: tl.constexpr, META_BF16: tl.constexpr,
):  # fmt: skip
    # Plain function, wrapped by triton.jit in _kernels(): the interpreter mode
    # (TRITON_INTERPRET) is read when a function is wrapped, so tests can switch it.
    E: tl.constexpr = 8 // BITS
    KB: tl.constexpr = GROUP // E  # packed bytes per scale group
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols_b = tl.arange(0, KB)
    byte = tl.load(codes_ptr + rows[:, None] * codes_stride + (g * KB + cols_b)[None, :], mask=rmask[:, None], other=0)
    shifts = tl.arange(0, E) * BITS
    q3 = (byte[:, :, None].to(tl.int32) >> shifts[None, None, :]) & MASK
    q = tl.reshape(q3, (BLOCK_N, GROUP))  # element (n, b, e) is k = b * E + e: LSB-first
    cols = g * GROUP + tl.arange(0, GROUP)
    if HAS_ZERO:
        # affine layer: W = q * scale + zero in fp32 (q * scale is exact, so a fused multiply-add
        # gives the same bits), rounded once to the output dtype like dequantize()
        sc = tl.load(scales_ptr + rows * scales_stride + g, mask=rmask, other=0)
        zr = tl.load(zeros_ptr + rows * zeros_stride + g, mask=rmask, other=0)
        if META_BF16:
            # bf16 -> fp32 by its bits (exact; the interpreter's float cast flushes subnormal scales)
            sc = (sc.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
            zr = (zr.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        wa = q.to(tl.float32) * sc.to(tl.float32)[:, None] + zr.to(tl.float32)[:, None]
        if ROUND_BF16:
            # round-to-nearest-even on the bits and store the upper half as the bf16 bit pattern:
            # no float cast at all, so subnormal weights survive (the interpreter's cast flushes them)
            ua = wa.to(tl.uint32, bitcast=True)
            ua = (ua + 0x7FFF + ((ua >> 16) & 1)) >> 16
            wo = ua.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            wo = wa.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], wo, mask=rmask[:, None])
    else:
        v = q.to(tl.float32) * STEP_V + OFFSET_V  # the weight's code map: exactly -1, 0 or +1
        if OUT_FP8:
            # unscaled values in e4m3 (exact), stored through a uint8 view; the GEMM applies the scales
            v8 = v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
            tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], v8, mask=rmask[:, None])
        else:
            s = tl.load(scales_ptr + rows * scales_stride + g, mask=rmask, other=0).to(tl.float32)
            if ROUND_BF16:
                # Round the scale to bf16 first, exactly like dequantize()'s scales.to(bf16): explicit
                # round-to-nearest-even on the fp32 bits (the interpreter's own cast truncates).
                u = s.to(tl.uint32, bitcast=True)
                u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
                s = u.to(tl.float32, bitcast=True)
            w = (v * s[:, None]).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], w, mask=rmask[:, None])


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> Any:
    # keyed on the interpreter flag, which triton reads when a function is wrapped
    return triton.jit(_dequant_kernel_src, do_not_specialize=["N"])


def unpack_into(weight: PackedLinearWeight, out: torch.Tensor, *, fp8_values: bool = False, config: str = "n64w4") -> torch.Tensor:
    """Write the dense weight ``[N, K]`` into ``out`` (float dtype), or with ``fp8_values`` the
    unscaled e4m3 values ``{-1, 0, +1}`` as a uint8 view. Returns ``out``."""
    codes, scales, bits, group = weight.codes, weight.scales, weight.bits, weight.group_size
    n = codes.shape[0]
    k = scales.shape[1] * group
    if codes.shape[1] * (8 // bits) != k or out.shape != (n, k):
        raise ValueError(f"codes {list(codes.shape)} / scales {list(scales.shape)} / out {list(out.shape)} disagree at {bits} bit")
    step, offset = weight.code_map
    zeros = getattr(weight, "zeros", None)
    if zeros is not None and fp8_values:
        raise ValueError("an affine layer (per-group zeros) has no unscaled {-1, 0, +1} values")
    round_bf16 = False
    if zeros is not None:
        round_bf16 = out.dtype == torch.bfloat16  # the fp32 result itself is rounded
    elif not fp8_values and scales.dtype != out.dtype and out.dtype != torch.float32:
        if out.dtype == torch.bfloat16:
            round_bf16 = True
        else:  # fp16 output from bf16/fp32 scales (old GPUs): round with torch, tiny tensor
            scales = scales.to(out.dtype)
    kern = _kernels(interpreting())
    block_n, warps = DEQUANT_CONFIGS[config]
    grid = (triton.cdiv(n, block_n), k // group)
    zp = zeros if zeros is not None else scales  # unused without HAS_ZERO
    kern[grid](
        codes, scales, out, n, codes.stride(0), scales.stride(0), out.stride(0), zp, zp.stride(0),
        BITS=bits, STEP_V=float(step), OFFSET_V=float(offset), GROUP=group,
        BLOCK_N=block_n, OUT_FP8=fp8_values, ROUND_BF16=round_bf16, HAS_ZERO=zeros is not None,
        META_BF16=zeros is not None and scales.dtype == torch.bfloat16, num_warps=warps,
    )  # fmt: skip
    return out


class Scratch:
    """One flat buffer per (device, dtype), grown to the largest layer; views are handed out.

    All layers share it because a transformer runs its linears one after another on one stream;
    the buffer is reused only after the consuming matmul was enqueued behind the same stream.

    Inside :meth:`transient` (the compiled path: Inductor, CUDA-graph warm-up and capture) every
    ``get`` is a fresh tensor that nothing keeps: a buffer grown during graph capture would live
    in the graph's private memory pool after the capture (torch refuses that), and a buffer the
    graph recorded must never be freed by a later growth while the graph can still replay. The
    caching allocator (or the graph's pool) hands the same block back to the next layer.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._local = threading.local()

    @contextmanager
    def transient(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    def is_transient(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def get(self, device: torch.device, dtype: torch.dtype, shape: tuple[int, int]) -> torch.Tensor:
        if self.is_transient():
            return torch.empty(shape, dtype=dtype, device=device)
        key = (str(device), dtype)
        numel = shape[0] * shape[1]
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            self._bufs.pop(key, None)  # free the old one before allocating the larger one
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
            log.debug("dequant scratch for %s %s grown to %d elements", device, dtype, numel)
        return buf[:numel].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def clear(self) -> None:
        self._bufs.clear()


SCRATCH = Scratch()


def dequant_linear(x2d: torch.Tensor, weight: PackedLinearWeight, config: str | None = None) -> torch.Tensor:
    """``x2d @ W.T`` through the dense scratch (exact); plain torch where no Triton kernel can run.
    Also the fallback of backends that cannot take an affine layer's per-group zeros."""
    if not triton_available() or (x2d.device.type != "cuda" and not interpreting()):
        return torch.nn.functional.linear(x2d, weight.dequantize(x2d.dtype))
    w = SCRATCH.get(x2d.device, x2d.dtype, (weight.out_features, weight.in_features))
    unpack_into(weight, w, config=config or next(iter(DEQUANT_CONFIGS)))
    return torch.nn.functional.linear(x2d, w)


class TritonDequantBackend(LowBitBackend):
    """Fused unpack+scale into the shared scratch, then ``F.linear`` (cuBLAS). Exact."""

    name = "triton_dequant"

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if bits not in (1, 2):
            raise BackendUnavailable(f"triton_dequant: bits must be 1 or 2, got {bits}")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("triton_dequant: torch reports no usable CUDA device")
            if not triton_available():
                raise BackendUnavailable(
                    "triton_dequant: triton is not installed (pip install triton); the 'torch' backend works without it"
                )
            return
        if device.type == "cpu" and interpreting() and triton_available():
            return
        raise BackendUnavailable(f"triton_dequant: needs a CUDA device, got {device.type}")

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        if not triton_available():
            # pure-torch fallback (same formula, one dense temporary)
            return torch.nn.functional.linear(x2d, weight.dequantize(x2d.dtype))
        w = SCRATCH.get(x2d.device, x2d.dtype, (weight.out_features, weight.in_features))
        unpack_into(weight, w, config=self._config(weight, w, state))
        return torch.nn.functional.linear(x2d, w)

    def _config(self, weight: PackedLinearWeight, w: torch.Tensor, state: dict[str, Any]) -> str:
        if w.device.type != "cuda":
            return next(iter(DEQUANT_CONFIGS))
        key = f"dequant_config|{w.dtype}"
        cfg = state.get(key)
        if cfg is None:
            cands = {c: (lambda c=c: unpack_into(weight, w, config=c)) for c in DEQUANT_CONFIGS}
            # the scratch does not depend on the token count: one entry per layer shape (m=1)
            cfg = self.context.choose("dequant", weight, 1, w.dtype, cands, w.device)
            state[key] = cfg
        return cfg
