"""The fused unpack+scale kernel is bit-exact with the one dequantization formula.

CPU: Triton's interpreter (``TRITON_INTERPRET=1``, set in a subprocess because triton reads it
when a kernel is wrapped) at tiny shapes. GPU: the compiled kernel at Klein shapes.
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
    from bonsai_image import kernels
    from bonsai_image.kernels import triton_dequant as td
    from bonsai_core import dispatch
    from bonsai_core.dispatch import lowbit_linear
    from bonsai_core.packing import PackedWeight, dequantize, pack_codes
    dispatch.register_backends(kernels.BACKENDS)
    g = torch.Generator().manual_seed(1)
    for bits in (1, 2):
        for sdt in (torch.float16, torch.bfloat16, torch.float32):
            for dt in (torch.bfloat16, torch.float16, torch.float32):
                n, k = 40, 384  # N not a multiple of the row block: masked rows
                q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, generator=g)
                codes = pack_codes(q, bits)
                sc = (torch.rand(n, k // 128, generator=g) * 3 + 1e-3).to(sdt)
                out = torch.full((n, k), float("nan"), dtype=dt)  # poisoned: every element must be written
                td.unpack_into(PackedWeight(codes, sc, bits), out)
                assert torch.equal(out, dequantize(codes, sc, bits, dt)), (bits, sdt, dt)
                o8 = torch.full((n, k), 0x7F, dtype=torch.uint8)
                td.unpack_into(PackedWeight(codes, sc, bits), o8, fp8_values=True)
                assert torch.equal(o8.view(torch.float8_e4m3fn).float(), dequantize(codes, torch.ones_like(sc), bits)), (bits, "fp8")
        x = torch.randn(3, 5, 384, generator=g).bfloat16()
        y = lowbit_linear(x, PackedWeight(codes, sc.bfloat16(), bits), backend="triton_dequant", state={})
        ref = torch.nn.functional.linear(x, dequantize(codes, sc.bfloat16(), bits, torch.bfloat16))
        assert torch.equal(y, ref)
    print("INTERP-OK")
    """
)


def test_fused_dequant_bit_exact_in_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "INTERP-OK" in r.stdout, r.stdout + r.stderr


def test_backend_refuses_cpu_without_interpreter() -> None:
    from bonsai_image.kernels.base import BackendUnavailable
    from bonsai_image.kernels.triton_dequant import TritonDequantBackend

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        TritonDequantBackend().check(torch.device("cpu"), torch.bfloat16, 1)


def test_scratch_is_shared_and_grows_to_the_largest_layer() -> None:
    from bonsai_image.kernels.triton_dequant import Scratch

    s = Scratch()
    a = s.get(torch.device("cpu"), torch.bfloat16, (4, 8))
    b = s.get(torch.device("cpu"), torch.bfloat16, (2, 8))
    assert a.data_ptr() == b.data_ptr() and s.nbytes() == 4 * 8 * 2
    s.get(torch.device("cpu"), torch.bfloat16, (16, 8))
    assert s.nbytes() == 16 * 8 * 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("shape", [(3072, 3072), (18432, 3072), (3072, 9216), (27648, 3072), (3072, 12288), (1000, 256)])
def test_fused_dequant_bit_exact_on_gpu(bits: int, shape: tuple[int, int]) -> None:
    from bonsai_core.dispatch import lowbit_linear
    from bonsai_core.packing import PackedWeight
    from bonsai_image.kernels import triton_dequant as td

    n, k = shape
    dev = torch.device("cuda")
    q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, device=dev)
    codes = pack_codes(q, bits)
    sc = (torch.rand(n, k // 128, device=dev) * 0.02 + 1e-4).half()
    for dt in (torch.bfloat16, torch.float16):
        out = torch.full((n, k), float("nan"), dtype=dt, device=dev)
        td.unpack_into(PackedWeight(codes, sc, bits), out)
        assert torch.equal(out, dequantize(codes, sc, bits, dt))
    x = torch.randn(77, k, device=dev, dtype=torch.bfloat16)
    y = lowbit_linear(x, PackedWeight(codes, sc, bits), backend="triton_dequant", state={})
    assert torch.equal(y, torch.nn.functional.linear(x, dequantize(codes, sc, bits, torch.bfloat16)))


def test_measured_table_remembers_winners_and_shipped_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bonsai_core.dispatch.table import MeasuredTable, entry_key, m_bucket
    from bonsai_core.dispatch.tune import measure_and_record

    assert [m_bucket(m) for m in (1, 2, 3, 1536, 4608, 6144)] == [1, 2, 4, 2048, 8192, 8192]
    key = entry_key("backend", 3072, 3072, 2, torch.bfloat16, 1536)
    path = tmp_path / "dispatch.json"
    table = MeasuredTable(path, "cpu-test")
    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        sum(range(200_000))

    def fast() -> None:
        calls.append("fast")

    def broken() -> None:
        raise RuntimeError("no kernel for this shape")

    # the tuning engine measures (a broken candidate is skipped) and records the winner
    import bonsai_core.dispatch.tune as tune

    monkeypatch.setattr(tune, "get_table", lambda device: table)  # this test's own table file, not the per-GPU one
    assert measure_and_record(key, {"slow": slow, "broken": broken, "fast": fast}, torch.device("cpu")) == "fast"
    # a new process reads the remembered winner
    again = MeasuredTable(path, "cpu-test")
    assert again.lookup(key)["winner"] == "fast" and set(again.lookup(key)["ms"]) == {"slow", "fast"}
    # a shipped table answers when the user's cache has no entry; the user's entry wins over it
    shipped = MeasuredTable(tmp_path / "empty.json", "cpu-test", shipped=path)
    assert shipped.lookup(key)["winner"] == "fast"
    user = tmp_path / "user.json"
    MeasuredTable(user, "cpu-test").record(key, "slow", {"slow": 1.0})
    assert MeasuredTable(user, "cpu-test", shipped=path).lookup(key)["winner"] == "slow"
