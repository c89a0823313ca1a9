"""The blockwise FP8 path computes ``dequant(x per 1x128 e4m3) @ W.T`` with exact e4m3 weights.

CPU: Triton's interpreter (subprocess, ``TRITON_INTERPRET=1``) on activations that are exact in
e4m3 after the per-block scaling, so every variant must match the float64 product closely
(the interpreter's own fp8 rounding is not the GPU's round-to-nearest-even, so arbitrary
activations would test the emulator, not the kernel). GPU: every variant on random data
against the torch oracle ``reference_fp8_linear`` and the exact product.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bonsai_core.packing import dequantize, pack_codes

triton = pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]

_INTERP_SCRIPT = textwrap.dedent(
    """
    from bonsai_tools.pack_import import isolate_pack
    isolate_pack()  # the pack's kernels/ as bonsai_image.kernels
    import torch
    from bonsai_image.kernels import fp8_blockwise as fp
    from bonsai_core.packing import PackedWeight, dequantize, pack_codes
    g = torch.Generator().manual_seed(2)
    for bits in (1, 2):
        m, n, k = 40, 136, 384  # ragged M and N: masked tiles
        q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, generator=g)
        codes = pack_codes(q, bits)
        sc = (torch.rand(n, k // 128, generator=g) * 0.1 + 0.01).half()
        # e4m3-exact activations: each 128-block holds +-448 * 2^e and other e4m3 values * 2^e
        vals = torch.randn(m, k, generator=g).mul(100).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        vals.view(m, k // 128, 128)[:, :, 0] = 448.0
        x = (vals.view(m, k // 128, 128) * 2.0 ** torch.randint(-12, -4, (m, k // 128, 1), generator=g)).view(m, k).bfloat16()
        exact = x.double() @ dequantize(codes, sc, bits, torch.float64).t()
        xq, s = fp.quantize_activations(x, 128)
        back = xq.float().view(m, k // 128, 128) * s.view(m, k // 128, 1)
        assert torch.equal(back.view(m, k), x.float()), "activation quantizer must be exact on e4m3-exact input"
        for variant in ["tri-fq-codes:m64n128w4s4", "tri-fq-scratch:m64n128w4s4", "tri-codes:m64n128w4s4", "tri-scratch:m64n128w4s4"]:
            y = fp.run_variant(variant, x, PackedWeight(codes, sc, bits))
            assert y.dtype == torch.bfloat16 and y.shape == (m, n)
            err = ((y.double() - exact).norm() / exact.norm()).item()
            assert err < 4e-3, (bits, variant, err)  # bf16 output rounding only
    print("INTERP-OK")
    """
)


def test_fp8_variants_in_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "INTERP-OK" in r.stdout, r.stdout + r.stderr


def test_fp8_is_not_picked_by_plain_auto() -> None:
    from bonsai_core.dispatch import registry, rules
    from bonsai_image.kernels.fp8_blockwise import FP8BlockwiseBackend

    assert FP8BlockwiseBackend.exact is False and not registry.is_exact(rules.FP8_BACKEND)
    assert rules.FP8_BACKEND not in rules.PREFERENCE


def _layer(n: int, k: int, bits: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, device=dev)
    return pack_codes(q, bits), (torch.rand(n, k // 128, device=dev) * 0.02 + 1e-4).half()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs an FP8 GPU (sm89+)")
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("mnk", [(1536, 3072, 3072), (333, 27648, 3072), (4608, 3072, 12288), (64, 18432, 3072)])
def test_fp8_variants_on_gpu(bits: int, mnk: tuple[int, int, int]) -> None:
    from bonsai_core.packing import PackedWeight
    from bonsai_image.kernels import fp8_blockwise as fp

    m, n, k = mnk
    dev = torch.device("cuda")
    codes, sc = _layer(n, k, bits, dev)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    oracle = fp.reference_fp8_linear(x, PackedWeight(codes, sc, bits)).float()
    exact = x.float() @ dequantize(codes, sc, bits, torch.float32).t()
    for variant in fp.FP8BlockwiseBackend().variants(dev, m):
        y = fp.run_variant(variant, x, PackedWeight(codes, sc, bits))
        assert torch.isfinite(y).all(), variant
        e_oracle = ((y.float() - oracle).norm() / oracle.norm()).item()
        e_exact = ((y.float() - exact).norm() / exact.norm()).item()
        assert e_oracle < 1e-2, (variant, e_oracle)  # same quantization, different summation order
        assert e_exact < 5e-2, (variant, e_exact)  # the e4m3 activation rounding itself


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs an FP8 GPU (sm89+)")
def test_fp8_backend_through_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path))
    from bonsai_core.dispatch import lowbit_linear, reload_tables, select_backend, table
    from bonsai_core.dispatch.tune import tune_device
    from bonsai_core.packing import PackedWeight

    monkeypatch.setattr(table, "SHIPPED_DIR", tmp_path / "no-shipped-table")  # this GPU unmeasured
    reload_tables()
    dev = torch.device("cuda")
    codes, sc = _layer(3072, 3072, 2, dev)
    x = torch.randn(2, 768, 3072, device=dev, dtype=torch.bfloat16)
    y = lowbit_linear(x, PackedWeight(codes, sc, 2), backend="fp8", state={})
    exact = torch.nn.functional.linear(x.float(), dequantize(codes, sc, 2, torch.float32))
    assert ((y.float() - exact).norm() / exact.norm()).item() < 5e-2
    assert select_backend(dev, torch.bfloat16, 2, 1536, "auto", k=3072, n=3072) != "fp8"
    saved = tmp_path / table.device_tag(dev) / "dispatch.json"
    assert not saved.exists()  # a prompt never measures, so it never writes the table
    records = tune_device(dev, [(3072, 3072)], bits=(2,), ms=(1536,))  # the explicit command does
    assert saved.is_file() and {r["key"].split("|")[0] for r in records} == {"backend", "backend-fp8"}
    assert any(k.startswith("fp8|") for k in table.get_table(dev).entries())  # the FP8 variant was measured on the way
    reload_tables()
