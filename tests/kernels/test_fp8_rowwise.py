"""The rowwise FP8 path: per-row e4m3 weights (``value * s / s_max * 448``), per-token e4m3
activations (``x * 448 / amax``), ``y = (a[m] * r[n]) * (xq @ w8.T)``.

CPU: Triton's interpreter (subprocess, ``TRITON_INTERPRET=1``) on data whose scaled values are
exact in e4m3, so both kernels must reproduce torch's quantization byte for byte and the backend
must match the float64 product to bf16 output rounding (the interpreter's own fp8 cast is not the
GPU's round-to-nearest-even, so arbitrary data would test the emulator, not the kernel).
GPU: random data, kernels byte-exact against torch's RTNE casts, the backend against the torch
oracle and the exact product, scratch and resident variants identical, and the dispatch path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bonsai_core.packing import PackedWeight, pack_codes

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]
needs_fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs an FP8 GPU (sm89+)"
)

_INTERP_SCRIPT = textwrap.dedent(
    """
    from bonsai_tools.pack_import import isolate_pack
    isolate_pack()  # the pack's kernels/ as bonsai_image.kernels
    import torch
    from bonsai_image.kernels import fp8_rowwise as fr
    from bonsai_core.packing import PackedWeight, pack_codes
    g = torch.Generator().manual_seed(3)
    for bits in (1, 2):
        m, n, k = 37, 72, 384  # ragged M and N: masked rows in both kernels
        q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, generator=g)
        # group scales s_max * 2^-j: s / s_max * 448 is exact in e4m3
        smax = torch.rand(n, 1, generator=g) * 0.05 + 0.01
        sc = (smax * 2.0 ** -torch.randint(0, 5, (n, k // 128), generator=g).float()).half()
        sc[:, 0] = sc.float().amax(1).half()
        w = PackedWeight(pack_codes(q, bits), sc, bits)
        r, inv = fr.row_scales(w)
        w8 = torch.empty(n, k, dtype=torch.float8_e4m3fn)
        assert torch.equal(fr.quantize_weight(w, w8), r), "row scales computed in the launch"
        want = (w.dequantize(torch.float32) * inv[:, None]).to(torch.float8_e4m3fn)
        assert torch.equal(w8.view(torch.uint8), want.view(torch.uint8)), "weight kernel"
        # activations: one +-448 * 2^e per token, the rest e4m3 values * 2^e
        vals = torch.randn(m, k, generator=g).mul(100).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        vals[:, 5] = 448.0
        x = (vals * 2.0 ** torch.randint(-10, -2, (m, 1), generator=g)).bfloat16()
        xq, sa = fr.prepare(w, None, x)
        assert sa.shape == (m, 1) and torch.equal(xq.float() * sa, x.float()), "activation kernel must be exact here"
        y = fr.FP8RowwiseBackend().matmul(x, w, {})
        exact = x.double() @ w.dequantize(torch.float64).t()
        assert y.dtype == torch.bfloat16 and y.shape == (m, n)
        err = ((y.double() - exact).norm() / exact.norm()).item()
        assert err < 4e-3, (bits, err)  # bf16 output rounding only
        assert torch.equal(fr.FP8RowwiseResidentBackend().matmul(x, w, {}), y)
    print("INTERP-OK")
    """
)


def test_fp8_rowwise_in_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "INTERP-OK" in r.stdout, r.stdout + r.stderr


def test_fp8_rowwise_is_registered_and_inexact() -> None:
    from bonsai_image import kernels
    from bonsai_image.kernels.fp8_rowwise import FP8RowwiseBackend, FP8RowwiseResidentBackend

    assert "fp8_rowwise" in kernels.BACKENDS and "fp8_rowwise_resident" in kernels.BACKENDS
    # never picked by plain ``auto`` (exact only)
    assert FP8RowwiseBackend.exact is False and FP8RowwiseResidentBackend.exact is False


def test_row_scales_are_ieee_divisions() -> None:
    """The oracle's row scales are correctly rounded quotients (what the launch's div.rn computes;
    ``448 / t`` in torch is ``t.reciprocal() * 448``, one rounding more, which broke the GPU byte check)."""
    from bonsai_image.kernels import fp8_rowwise as fr

    g = torch.Generator().manual_seed(11)
    codes = pack_codes(torch.randint(0, 3, (512, 256), generator=g, dtype=torch.uint8), 2)
    w = PackedWeight(codes, (torch.rand(512, 2, generator=g) * 0.02 + 2e-3).half(), 2)
    r, inv = fr.row_scales(w)
    smax = w.scales.double().abs().amax(1)
    assert torch.equal(r, (smax / 448.0).float()) and torch.equal(inv, (448.0 / smax).float())


def _weight(n: int, k: int, bits: int, dev: torch.device) -> PackedWeight:
    q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, device=dev)
    # scales spread over a decade within a row, as trained scales are
    return PackedWeight(pack_codes(q, bits), (torch.rand(n, k // 128, device=dev) * 0.02 + 2e-3).half(), bits)


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("mnk", [(1536, 3072, 3072), (333, 27648, 3072), (4608, 3072, 9216), (64, 18432, 3072)])
def test_fp8_rowwise_on_gpu(bits: int, mnk: tuple[int, int, int]) -> None:
    from bonsai_image.kernels import fp8_rowwise as fr

    m, n, k = mnk
    dev = torch.device("cuda")
    w = _weight(n, k, bits, dev)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    x[0] = 0  # an all-zero token must give zeros, not NaN
    # oracle scales on the CPU (IEEE divisions there; torch's CUDA division by a scalar multiplies
    # by the reciprocal, one rounding more than the launch's div.rn)
    wc = PackedWeight(w.codes.cpu(), w.scales.cpu(), bits)
    r, inv = fr.row_scales(wc)
    w8 = torch.empty(n, k, dtype=torch.float8_e4m3fn, device=dev)
    assert torch.equal(fr.quantize_weight(w, w8).cpu(), r)
    want = (wc.dequantize(torch.float32) * inv[:, None]).to(torch.float8_e4m3fn)
    assert torch.equal(w8.view(torch.uint8).cpu(), want.view(torch.uint8))  # GPU cast is RTNE like torch's
    xq, sa = fr.prepare(w, None, x)
    # oracle on the CPU with tensor/tensor divisions: IEEE there (torch's CUDA division by a scalar
    # multiplies by its reciprocal, one rounding more than the kernel's div.rn)
    xc = x.float().cpu()
    amax = xc.abs().amax(1, keepdim=True).clamp_min(1e-12)
    c448 = torch.full_like(amax, 448.0)
    assert torch.equal(sa.cpu(), amax / c448)
    want_q = (xc * (c448 / amax)).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(xq.view(torch.uint8).cpu(), want_q.view(torch.uint8))
    y = fr.FP8RowwiseBackend().matmul(x, w, {})
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and not y[0].any()
    oracle = fr.reference_rowwise(x, w).float()
    exact = x.float() @ w.dequantize(torch.float32).t()
    assert ((y.float() - oracle).norm() / oracle.norm()).item() < 1e-2  # same quantization, other summation order
    assert ((y.float() - exact).norm() / exact.norm()).item() < 6e-2  # e4m3 rounding of activations and scale ratios
    state: dict = {}
    yr = fr.FP8RowwiseResidentBackend().matmul(x, w, state)
    assert torch.equal(yr, y) and state["fp8_rowwise_resident"][1] is not None
    state = {}
    fr.FP8RowwiseBackend().matmul(x, w, state)
    assert not state  # the shared-scratch variant keeps nothing per layer (safe under graph capture)


@pytest.mark.gpu
@needs_fp8_gpu
def test_fp8_rowwise_through_dispatch() -> None:
    from bonsai_core import dispatch
    from bonsai_image import kernels

    dispatch.register_backends(kernels.BACKENDS)
    dev = torch.device("cuda")
    w = _weight(3072, 3072, 2, dev)
    x = torch.randn(2, 768, 3072, device=dev, dtype=torch.bfloat16)
    y = dispatch.lowbit_linear(x, w, backend="fp8_rowwise", state={})
    exact = torch.nn.functional.linear(x.float(), w.dequantize(torch.float32))
    assert y.shape == (2, 768, 3072)
    assert ((y.float() - exact).norm() / exact.norm()).item() < 6e-2
    assert dispatch.select_backend(dev, torch.bfloat16, 2, 1536, "auto", k=3072, n=3072) not in ("fp8_rowwise", "fp8_rowwise_resident")
