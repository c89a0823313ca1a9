"""The 4-bit text encoder's one-launch dequantization equals the runtime's torch formula bit for bit,
for both released layouts and every compute dtype (CPU: Triton's interpreter in a subprocess; GPU:
random data on the device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]


def check(device: str) -> None:
    from bonsai_core.te_formats import FORMULA, dequantize_4bit
    from bonsai_tools.pack_import import isolate_pack

    isolate_pack()  # the pack's kernels/ as bonsai_image.kernels (also in the interpreter's subprocess)
    from bonsai_image.kernels import triton_dequant4 as td4

    g = torch.Generator().manual_seed(7)
    for layout in ("hqq", "mlx"):
        for sdt in (torch.float16, torch.bfloat16, torch.float32):
            for out in (torch.bfloat16, torch.float16, torch.float32):
                r, k, gs = 45, 256, 64  # ragged rows: masked stores
                codes = torch.randint(0, 256, (r, k // 2), generator=g, dtype=torch.uint8).to(device)
                scales = (torch.rand(r, k // gs, generator=g) * 0.03 + 1e-3).to(sdt).to(device)
                offsets = (torch.randn(r, k // gs, generator=g) * (7.5 if layout == "hqq" else 0.05)).to(sdt).to(device)
                want = dequantize_4bit(codes, scales, offsets, layout, out, gs)
                got = torch.full((r, k), float("nan"), dtype=out, device=device)
                first, sign = FORMULA[layout]
                td4.dequantize4_into(codes, scales, offsets, got, offset_first=first, offset_sign=sign)
                bits = torch.int32 if out == torch.float32 else torch.int16
                assert torch.equal(got.view(bits), want.view(bits)), (layout, sdt, out)


def test_dequant4_in_triton_interpreter() -> None:
    script = "from test_triton_dequant4 import check; check('cpu'); print('INTERP-OK')"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "INTERP-OK" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dequant4_on_gpu() -> None:
    check("cuda")
