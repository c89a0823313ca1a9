"""gemlite packs written by gemlite itself: every packed layer of a tiny Bonsai transformer is replaced by
what ``GemLiteLinearTriton.pack()`` of gemlite 0.5.1.post1 (the release's pin) and 0.6.0.post2 stores
(fp32 scale/zero, packing width 8, fma mode, W_group_mode 4), and the reader must give exactly what
gemlite's own unpacking (``bitpack.unpack_over_rows_torch``) and its mode-4 formula ``q * scales +
zeros`` give.

Each gemlite version lives in its own folder (``pip install --no-deps --target``; the two cannot share
one environment) named in ``$BONSAI_GEMLITE_PATHS`` (.ci/run sets it). gemlite's *import* needs a GPU:
0.5.1's ``triton_kernels/utils.py`` calls ``torch.cuda.get_device_properties`` and 0.6's
``torch.cuda.get_device_capability`` at module level, and both ask Triton's active driver for its
target (``is_hip``). Its ``pack()`` does not: on CPU tensors it packs with ``pack_weights_over_cols_torch``.
So the subprocess answers those three device queries with an sm90 stand-in before importing gemlite,
and then runs gemlite's own, unmodified ``pack()`` and unpacking on CPU; no gemlite kernel runs.

Edge groups, made through pack()'s own arithmetic (it stores ``zeros = -z * scales``): z one ulp off
1/2 (binary) or 1 (ternary) in ~1 % of groups, scale 0 (stored zero -0.0), subnormal scales; and one
layer packed with ``contiguous=False`` (``W_q`` a transposed view, ``data_contiguous`` 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bonsai_core.formats import open_checkpoint
from bonsai_core.klein import bfl_quantized_layers
from bonsai_tools.synth import make_fixture

REPO = Path(__file__).resolve().parents[2]
PATHS = [Path(p) for p in os.environ.get("BONSAI_GEMLITE_PATHS", "").split(os.pathsep) if p]

_PACK = textwrap.dedent(
    """
    import sys, types, torch
    # gemlite's import asks the GPU and Triton's driver for what they are; pack() itself runs on CPU
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 << 30)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_name = lambda *a, **k: props.name
    from triton.runtime import driver
    from triton.backends.compiler import GPUTarget
    class _Target:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
        def get_current_device(self):
            return 0
        utils = types.SimpleNamespace(get_device_properties=lambda i: {"max_shared_mem": 232448})
    driver.set_active(_Target())
    import gemlite
    from gemlite.core import GemLiteLinearTriton, DType
    from gemlite.bitpack import unpack_over_rows_torch

    src, dst, bits, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sd = torch.load(src, weights_only=True)
    g = torch.Generator().manual_seed(seed)
    expected, first = {}, True
    for key in [k for k in sd if k.endswith(".W_q")]:
        mod = key[: -len(".W_q")]
        n, k = (int(x) for x in sd[mod + ".orig_shape"].tolist())
        q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, generator=g)
        s = torch.rand(n, k // 128, generator=g) * 0.05 + 0.005
        scale = s * (2 if bits == 1 else 1)
        z = torch.full_like(s, 0.5 if bits == 1 else 1.0)
        flat = z.view(-1)
        pick = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 100)]
        flat[pick] = torch.nextafter(flat[pick], torch.tensor(2.0))
        scale[0, 0] = 0.0
        scale[min(1, n - 1), 0] = 1e-40
        layer = GemLiteLinearTriton(W_nbits=bits, group_size=128, in_features=k, out_features=n,
                                    input_dtype=DType.FP16, output_dtype=DType.FP16)
        layer.pack(q, scale, z, fma_mode=True, packing_bitwidth=8, contiguous=False if first else None)
        state = layer.state_dict()
        if first:  # the transposed view torch.save keeps as a view, flagged in metadata[11]
            assert not state["W_q"].is_contiguous() and int(state["metadata"][11]) == 0
        first = False
        for leaf in ("W_q", "scales", "zeros", "metadata", "orig_shape", "meta_scale"):
            sd.pop(mod + "." + leaf, None)
            if leaf in state:
                sd[mod + "." + leaf] = state[leaf].detach()
        # gemlite's own decoding: unpack along K, then W_group_mode 4 (q * scales + zeros) per group
        qk = unpack_over_rows_torch(state["W_q"].detach(), bits, k, torch.uint8).float()  # [K, N]
        sc, zr = state["scales"].float(), state["zeros"].float()  # [K/128, N]
        w = qk * sc.repeat_interleave(128, 0) + zr.repeat_interleave(128, 0)
        expected[mod] = w.t().contiguous()
        assert int(state["metadata"][10]) == 4 and int(state["metadata"][1]) == bits
    torch.save(sd, dst)
    torch.save(expected, dst + ".expected")
    print("PACKED", gemlite.__version__)
    """
)


def _pack_with_gemlite(lib: Path, pack: Path, bits: int, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    sd_path = pack / "state_dict.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(lib), str(REPO)]), "CUDA_VISIBLE_DEVICES": ""}
    out = pack / "packed.pt"
    r = subprocess.run(
        [sys.executable, "-c", _PACK, str(sd_path), str(out), str(bits), str(seed)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "PACKED" in r.stdout, r.stdout + r.stderr[-3000:]
    expected = torch.load(str(out) + ".expected", weights_only=True)
    Path(str(out) + ".expected").unlink()
    out.replace(sd_path)
    return expected, r.stdout.split("PACKED", 1)[1].strip()


@pytest.mark.skipif(not PATHS, reason="set BONSAI_GEMLITE_PATHS (.ci/run installs gemlite 0.5.1.post1 and 0.6.0.post2 there)")
@pytest.mark.parametrize("lib", PATHS, ids=[p.name for p in PATHS])
@pytest.mark.parametrize("variant", ["binary", "ternary"])
def test_pack_from_gemlite_matches_gemlite_unpack(tmp_path: Path, lib: Path, variant: str) -> None:
    bits = 1 if variant == "binary" else 2
    root = tmp_path / "snap"
    make_fixture(variant, "tiny", "gemlite", 9, root)
    pack = root / f"transformer-gemlite-int{bits}"
    expected, info = _pack_with_gemlite(lib, pack, bits, 9)
    version = info.split()[0]
    assert version.startswith(lib.name.removeprefix("gemlite-")[:3]), (version, lib)
    ckpt = open_checkpoint(pack, variant)
    affine = 0
    for bk, mods in bfl_quantized_layers(ckpt.meta.config).items():
        p = ckpt.load_packed(bk)
        affine += p.is_affine
        want = torch.cat([expected[m] for m in mods], 0)
        assert torch.equal(p.dequantize(torch.float32), want), bk
    assert affine == len(ckpt.packed_shapes)  # every layer has one-ulp, scale-0 and subnormal groups
    # the same file without its JSON side files: the layers' gemlite metadata says the rest
    (pack / "quantization_config.json").unlink()
    loose = open_checkpoint(pack / "state_dict.pt", variant)
    k = next(iter(ckpt.packed_shapes))
    assert torch.equal(loose.load_packed(k).dequantize(), ckpt.load_packed(k).dequantize())
