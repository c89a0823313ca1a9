"""MLX packs written by MLX itself: every packed layer of a tiny Bonsai transformer is replaced by what
``mx.quantize`` (mlx[cpu], the version .ci/run installs) makes of a binary weight, and the file is
written with ``mx.save_safetensors``. The reader must give exactly what ``mx.dequantize`` gives.

What MLX itself writes for a binary group: ``scale = max - min``, ``bias = min``; for a constant group
(scale 0) and for a group of subnormal values it writes a floor scale (1e-7) instead, so those groups
break the exact Bonsai relation, as do groups whose two values are not symmetric (one ulp off): the
affine path must carry them. For 2 bits, ``mx.quantize`` spreads a group over all four codes (code 3
included), which no Bonsai ternary layer holds: the layout and formula still decode exactly as
``mx.dequantize`` for codes 0-2, and the reader refuses the file in one line naming row and input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.klein import bfl_quantized_layers
from bonsai_core.packing import dequantize_affine, unpack_codes
from bonsai_core.safetensors_io import SafetensorsReader
from bonsai_tools.synth import make_fixture

mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is installed by .ci/run")

FILE = Path("transformer-packed-mflux") / "diffusion_pytorch_model.safetensors"


def _binary_weight(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Dense float32 [n, k] with one {-s, +s} pair per 128-group, and edge groups: ~1 % asymmetric by
    one ulp, one constant group (scale 0), one group of subnormal magnitude."""
    g = k // 128
    s = (rng.random((n, g)) * 0.05 + 0.005).astype(np.float32)
    sign = np.where(rng.integers(0, 2, (n, k)) == 1, 1.0, -1.0).astype(np.float32)
    w = sign * np.repeat(s, 128, 1)
    w = w.astype(np.float32)
    for idx in rng.choice(n * g, max(1, n * g // 100), replace=False):
        r, c = divmod(int(idx), g)
        cols = slice(c * 128, c * 128 + 128)
        w[r, cols] = np.where(w[r, cols] > 0, np.nextafter(s[r, c], np.float32(1)), w[r, cols])
    w[0, :128] = -s[0, 0]  # constant group
    w[1 % n, 128:256] = np.where(w[1 % n, 128:256] > 0, 1e-39, -1e-39).astype(np.float32)  # bf16 subnormals
    return w


def _mx_f32(a) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array(a.astype(mx.float32))


def _rewrite_with_mlx(root: Path, bits: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Replace every packed layer with ``mx.quantize`` output; returns module -> (mx.dequantize in
    bf16 as float32, in float32 from float32 scale/bias)."""
    f = root / FILE
    r = SafetensorsReader(f)
    arrays, expected = {}, {}
    rng = np.random.default_rng(seed)
    for key in r.keys():
        t = r.get(key)
        if key.endswith((".scales", ".biases")):
            continue
        mod = key[: -len(".weight")]
        if f"{mod}.scales" not in r:
            arrays[key] = mx.array(t.float().numpy()).astype(mx.bfloat16)  # exact: the fixture is bf16
            continue
        n, k = r.shape(f"{mod}.scales")[0], r.shape(f"{mod}.scales")[1] * 128
        w = mx.array(_binary_weight(n, k, rng)).astype(mx.bfloat16)
        wq, sc, bi = mx.quantize(w, group_size=128, bits=bits)
        arrays.update({f"{mod}.weight": wq, f"{mod}.scales": sc, f"{mod}.biases": bi})
        expected[mod] = (
            _mx_f32(mx.dequantize(wq, sc, bi, group_size=128, bits=bits)),
            np.array(mx.dequantize(wq, sc.astype(mx.float32), bi.astype(mx.float32), group_size=128, bits=bits)),
        )
    r.close()
    mx.save_safetensors(str(f), arrays, metadata={"format": "mlx"})
    return expected


def test_binary_pack_from_mx_quantize_matches_mx_dequantize(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    make_fixture("binary", "tiny", "mlx", 3, root)
    expected = _rewrite_with_mlx(root, 1, 3)
    ckpt = open_checkpoint(root, "binary")
    affine = 0
    for bk, mods in bfl_quantized_layers(ckpt.meta.config).items():
        p = ckpt.load_packed(bk)
        affine += p.is_affine
        want16 = torch.from_numpy(np.concatenate([expected[m][0] for m in mods]))
        want32 = torch.from_numpy(np.concatenate([expected[m][1] for m in mods]))
        assert torch.equal(p.dequantize(torch.bfloat16).float(), want16), bk
        assert torch.equal(p.dequantize(torch.float32), want32), bk
    assert affine == len(ckpt.packed_shapes)  # MLX's own floor scale breaks the relation in every layer's edge groups


def test_two_bit_mx_quantize_layout_and_code_3_refusal(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w = mx.array(_binary_weight(6, 256, rng) * np.where(rng.random((6, 256)) < 0.3, 0, 1).astype(np.float32)).astype(mx.bfloat16)
    wq, sc, bi = mx.quantize(w, group_size=128, bits=2)
    codes = torch.from_numpy(np.array(wq)).view(torch.uint8)
    q = unpack_codes(codes, 2)
    ours = dequantize_affine(codes, torch.from_numpy(_mx_f32(sc)), torch.from_numpy(_mx_f32(bi)), 2, torch.bfloat16).float()
    theirs = torch.from_numpy(_mx_f32(mx.dequantize(wq, sc, bi, group_size=128, bits=2)))
    assert torch.equal(ours[q < 3], theirs[q < 3]) and bool((q == 3).any())
    root = tmp_path / "snap"
    make_fixture("ternary", "tiny", "mlx", 4, root)
    _rewrite_with_mlx(root, 2, 4)
    ckpt = open_checkpoint(root, "ternary")
    with pytest.raises(BonsaiFormatError, match=r"code 3 at row \d+, input \d+") as ei:
        ckpt.load_packed(next(iter(ckpt.packed_shapes)))
    assert ei.value.tensor.endswith(".weight") and str(root / FILE) == ei.value.path
