"""The 4-bit text encoder's per-linear dequantization in one Triton launch.

The released Qwen3 text encoder is 4-bit with one scale and one offset per 64 inputs. Evaluated
with torch ops, one linear's dense weight costs about eight launches and four full-size
temporaries (unpack, cast, offset, scale); 252 linears per encode made the text encoder slower
than stock FP8's although the matmuls are the same. Here one launch writes the weight, in the
activation dtype, straight into the buffer the matmul reads.

The caller passes how the layout combines code ``q``, scale ``s`` and offset ``o`` (read from the
runtime's one definition, never restated here): ``OFFSET_FIRST`` -> ``(q + sign*o) * s``, else
``q * s + sign*o``. Every step rounds to the output dtype as torch does for one elementwise op
(round to nearest even), so the weight is bit-identical to the runtime's torch dequantization.
"""

# No ``from __future__ import annotations``: triton needs the real ``tl.constexpr`` objects.
from functools import lru_cache
from typing import Any

import torch

from .triton_dequant import interpreting, tl, triton  # triton or its stand-in when missing

_BLOCK_R = 32  # rows per program; one offset/scale group of columns per program


def _rne_bf16(x):  # noqa: ANN001, ANN202 - a Triton helper
    # round fp32 to the nearest bf16 (ties to even) on the bits: the GPU cast does this, Triton's
    # CPU interpreter truncates, and the tests run there
    u = x.to(tl.uint32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.to(tl.float32, bitcast=True)


def _dequant4_src(
    codes_ptr, scales_ptr, offsets_ptr, out_ptr, R, codes_stride, meta_stride, out_stride,
    GROUP: tl.constexpr, BLOCK_R: tl.constexpr, OFFSET_FIRST: tl.constexpr, SIGN: tl.constexpr, OUT_KIND: tl.constexpr,
):  # fmt: skip
    # OUT_KIND: 0 = fp32 (no rounding), 1 = bf16, 2 = fp16
    pid_r = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    HALF: tl.constexpr = GROUP // 2
    byte = tl.load(codes_ptr + rows[:, None] * codes_stride + (g * HALF + tl.arange(0, HALF))[None, :], mask=rmask[:, None], other=0)
    b = byte.to(tl.int32)
    q = tl.reshape(tl.join(b & 15, b >> 4), (BLOCK_R, GROUP)).to(tl.float32)  # column 2j = low nibble of byte j
    s = tl.load(scales_ptr + rows * meta_stride + g, mask=rmask, other=0).to(tl.float32)
    o = tl.load(offsets_ptr + rows * meta_stride + g, mask=rmask, other=0).to(tl.float32) * SIGN
    if OUT_KIND == 1:
        s = _rne_bf16(s)
        o = _rne_bf16(o)
        if OFFSET_FIRST:
            w = _rne_bf16(_rne_bf16(q + o[:, None]) * s[:, None])
        else:
            w = _rne_bf16(_rne_bf16(q * s[:, None]) + o[:, None])
    elif OUT_KIND == 2:
        s = s.to(tl.float16).to(tl.float32)
        o = o.to(tl.float16).to(tl.float32)
        if OFFSET_FIRST:
            w = ((q + o[:, None]).to(tl.float16).to(tl.float32) * s[:, None]).to(tl.float16).to(tl.float32)
        else:
            w = ((q * s[:, None]).to(tl.float16).to(tl.float32) + o[:, None]).to(tl.float16).to(tl.float32)
    else:
        if OFFSET_FIRST:
            w = (q + o[:, None]) * s[:, None]
        else:
            w = q * s[:, None] + o[:, None]
    cols = g * GROUP + tl.arange(0, GROUP)
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=rmask[:, None])


@lru_cache(maxsize=2)
def _kernel(interpret: bool) -> Any:
    # keyed on the interpreter flag, which triton reads when a function is wrapped
    helper = triton.jit(_rne_bf16)
    _dequant4_src.__globals__["_rne_bf16"] = helper
    return triton.jit(_dequant4_src, do_not_specialize=["R"])


_OUT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def available(device: torch.device) -> bool:
    """Whether :func:`dequantize4_into` can run on ``device``."""
    return triton is not None and (device.type == "cuda" or (device.type == "cpu" and interpreting()))


def dequantize4_into(
    codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor, *, offset_first: bool, offset_sign: float
) -> torch.Tensor:
    """Write the dense ``[R, K]`` weight of 4-bit ``codes [R, K/2]`` with per-group ``scales`` /
    ``offsets [R, K/group]`` into ``out`` (fp32, bf16 or fp16). Returns ``out``."""
    r, kb = codes.shape
    k = kb * 2
    groups = scales.shape[1]
    if out.shape != (r, k) or scales.shape != offsets.shape or scales.shape[0] != r or k % groups or out.dtype not in _OUT_KINDS:
        raise ValueError(f"codes {list(codes.shape)} / scales {list(scales.shape)} / offsets {list(offsets.shape)} / out {list(out.shape)} {out.dtype} disagree")
    group = k // groups
    if group % 2 or group & (group - 1):
        raise ValueError(f"group size {group} must be an even power of two")
    if not (codes.is_contiguous() and scales.stride(1) == 1 and offsets.stride() == scales.stride() and out.stride(1) == 1):
        raise ValueError("codes must be contiguous, scales/offsets row-major with equal strides, out row-major")
    grid = (triton.cdiv(r, _BLOCK_R), groups)
    _kernel(interpreting())[grid](
        codes, scales, offsets, out, r, codes.stride(0), scales.stride(0), out.stride(0),
        GROUP=group, BLOCK_R=_BLOCK_R, OFFSET_FIRST=bool(offset_first), SIGN=float(offset_sign), OUT_KIND=_OUT_KINDS[out.dtype],
    )  # fmt: skip
    return out
