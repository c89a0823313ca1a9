"""Affine layers (``PackedWeight.zeros``: the file's own ``(scale, zero)`` per group) in every backend.

The torch reference is bit-exact to ``q * scale + zero`` in fp32; the Triton dequant kernel is
bit-exact to it (interpreter on CPU, compiled on a GPU); MLX computes it with the file's pair; the
FP8 rowwise path keeps its error budget; the blockwise FP8 backend, which has no place for a
per-group zero, falls back to the exact dense product. Edge groups: scale 0 with zero -0.0, scale 0
with a non-zero zero, subnormal scales, one-ulp-off pairs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bonsai_core.dispatch import lowbit_linear
from bonsai_core.packing import PackedWeight, dequantize_affine

REPO = Path(__file__).resolve().parents[2]

MAKE_WEIGHT = textwrap.dedent(
    """
    import torch
    from bonsai_core.packing import PackedWeight, pack_codes

    def affine_weight(bits, n, k, seed, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, generator=g)
        s = torch.rand(n, k // 128, generator=g) * 0.05 + 1e-3
        scale = (s * (2 if bits == 1 else 1)).to(dtype)
        zero = (-s).to(dtype)
        scale.view(-1)[::7] = torch.nextafter(scale.view(-1)[::7].float(), torch.tensor(1.0)).to(dtype)
        scale[0, 0], zero[0, 0] = 0.0, -0.0
        scale[1, 0] = 0.0
        scale[2, 0], zero[2, 0] = (2e-40, -1e-40) if dtype == torch.float32 else (2.0 ** -132, -(2.0 ** -133))  # subnormal values
        zero[3, 0] = 1e-39
        return PackedWeight(pack_codes(q, bits), scale, bits, zeros=zero), q
    """
)
exec(MAKE_WEIGHT)  # noqa: S102 -- the same builder runs in the interpreter subprocess below


def _oracle(q: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    n, k = q.shape
    s = w.scales.float().repeat_interleave(128, 1)
    z = w.zeros.float().repeat_interleave(128, 1)
    return q.float() * s + z


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("sdt", [torch.float32, torch.bfloat16])
def test_reference_dequantize_is_the_fp32_formula(bits: int, sdt: torch.dtype) -> None:
    w, q = affine_weight(bits, 8, 384, 5, sdt)  # noqa: F821 -- defined by exec above
    want = _oracle(q, w)
    got = w.dequantize(torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert 0 < got[2, :128].abs().max() < 1e-37  # subnormal weights are kept, not flushed
    for dt in (torch.bfloat16, torch.float16):
        assert torch.equal(w.dequantize(dt), want.to(dt)), dt
    assert torch.equal(dequantize_affine(w.codes, w.scales, w.zeros, bits), want)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_backends_on_cpu_compute_the_affine_product(backend: str) -> None:
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    w, q = affine_weight(1, 24, 256, 9, torch.bfloat16)  # noqa: F821
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    ref = x.double() @ _oracle(q, w).double().t()
    y = lowbit_linear(x, w, backend=backend, state={})
    tol = 1e-5 if backend == "torch" else 1e-4
    assert torch.allclose(y.double(), ref, rtol=tol, atol=tol * float(ref.abs().max())), (y.double() - ref).abs().max()
    if backend == "torch":
        assert torch.equal(y, torch.nn.functional.linear(x, _oracle(q, w)))


_INTERP = MAKE_WEIGHT + textwrap.dedent(
    """
    import kernels
    from kernels import triton_dequant as td, fp8_rowwise as fr
    from bonsai_core import dispatch
    from bonsai_core.dispatch import lowbit_linear
    dispatch.register_backends(kernels.BACKENDS)
    for bits in (1, 2):
        for sdt in (torch.float32, torch.bfloat16, torch.float16):
            w, q = affine_weight(bits, 40, 384, bits * 10 + 1, sdt)
            for dt in (torch.bfloat16, torch.float16, torch.float32):
                out = torch.full((40, 384), float("nan"), dtype=dt)
                td.unpack_into(w, out)
                assert torch.equal(out, w.dequantize(dt)), ("dequant", bits, sdt, dt)
            r, inv = fr.row_scales(w)
            assert bool((w.dequantize().abs().amax(1) <= r * 448 * (1 + 2**-20)).all()), "row max"
        # rowwise FP8 weight kernel on an affine layer whose scaled values are e4m3 values (the
        # interpreter's own fp8 cast is not the GPU's RTNE): zero = -4u, scale = 3u, u = 2^-e * 2^-j
        g = torch.Generator().manual_seed(bits)
        q = torch.randint(0, 2 if bits == 1 else 3, (40, 384), dtype=torch.uint8, generator=g)
        u = 2.0 ** -(torch.randint(4, 9, (40, 1), generator=g).float() + torch.randint(0, 4, (40, 3), generator=g).float())
        u[:, 0] = u.amax(1)
        w = PackedWeight(pack_codes(q, bits), 3 * u, bits, zeros=-4 * u)
        r, inv = fr.row_scales(w)
        w8 = torch.empty(40, 384, dtype=torch.float8_e4m3fn)
        assert torch.equal(fr.quantize_weight(w, w8), r), "row scales computed in the launch"
        want = (w.dequantize(torch.float32) * inv[:, None]).to(torch.float8_e4m3fn)
        assert torch.equal(w8.view(torch.uint8), want.view(torch.uint8)), "fp8 weight"
        x = torch.randn(3, 384, generator=torch.Generator().manual_seed(bits)).bfloat16()
        exact = torch.nn.functional.linear(x, w.dequantize(torch.bfloat16))
        for name in ("triton_dequant", "fp8"):
            y = lowbit_linear(x, w, backend=name, state={})
            assert torch.equal(y, exact), name  # fp8 falls back to the exact dense product
    print("AFFINE-INTERP-OK")
    """
)


def test_triton_kernels_affine_in_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _INTERP], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "AFFINE-INTERP-OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [1, 2])
def test_affine_backends_on_cuda(bits: int) -> None:
    from bonsai_core.dispatch import unavailable_reason

    cuda = torch.device("cuda")
    for sdt in (torch.float32, torch.bfloat16):
        w, q = affine_weight(bits, 3072, 3072, bits, sdt)  # noqa: F821
        w = w.to(cuda)
        x = torch.randn(300, 3072, device=cuda, dtype=torch.bfloat16)
        exact = torch.nn.functional.linear(x, w.dequantize(torch.bfloat16))
        from kernels import triton_dequant as td

        out = torch.empty(3072, 3072, device=cuda, dtype=torch.bfloat16)
        assert torch.equal(td.unpack_into(w, out), w.dequantize(torch.bfloat16)), "compiled dequant kernel"
        out32 = torch.empty(3072, 3072, device=cuda, dtype=torch.float32)
        assert torch.equal(td.unpack_into(w, out32), w.dequantize(torch.float32)), "compiled dequant kernel fp32 (subnormals kept)"
        assert torch.equal(lowbit_linear(x, w, backend="triton_dequant", state={}), exact)
        ref = x.double() @ w.dequantize().double().t()
        for name, tol in (("gemlite", 2e-2), ("fp8_rowwise", 8e-2), ("fp8", 1e-2)):
            if unavailable_reason(name, cuda, torch.bfloat16, bits) is not None:
                continue
            y = lowbit_linear(x, w, backend=name, state={}).double()
            rel = ((y - ref).norm() / ref.norm()).item()
            assert rel < tol, (name, sdt, rel)
