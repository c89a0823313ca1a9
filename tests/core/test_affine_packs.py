"""Affine packs: gemlite/MLX files in which some groups break the exact Bonsai relation (one ulp off,
scale 0, subnormal scales) load, and every layer computes exactly ``W = q * scale + zero`` from the
file's own tensors; canonical files round-trip them; layouts that cannot hold them refuse in one line.
(Before the general affine path, every one of these files was refused.)"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from affine_helpers import LEAVES, break_relation, file_formula, unpack_lsb
from bad_input_helpers import QKV, copy_fixture, gemlite_copy, rewrite_safetensors, rewrite_state

from bonsai_core.canonical import ZERO_LEAF
from bonsai_core.convert import convert
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.klein import bfl_quantized_layers
from bonsai_core.safetensors_io import SafetensorsReader

BITS = {"binary": 1, "ternary": 2}


def _broken_gemlite(tiny: dict, tmp_path: Path, variant: str) -> tuple[Path, int]:
    root, pack = gemlite_copy(tiny, tmp_path, variant)
    gen = torch.Generator().manual_seed(11)
    off = 0

    def edit(sd: dict) -> None:
        nonlocal off
        for key in [k for k in sd if k.endswith(".scales")]:
            mod = key[: -len(".scales")]
            off += break_relation(sd[f"{mod}.scales"], sd[f"{mod}.zeros"], gen)

    rewrite_state(pack, edit)
    return pack, off


def _broken_mlx(tiny: dict, tmp_path: Path, variant: str) -> tuple[Path, int]:
    root = copy_fixture(tiny[(variant, "mlx")], tmp_path / "snap")
    f = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    gen = torch.Generator().manual_seed(12)
    off = 0

    def edit(t: dict) -> None:
        nonlocal off
        for key in [k for k in t if k.endswith(".scales")]:
            mod = key[: -len(".scales")]
            off += break_relation(t[f"{mod}.scales"], t[f"{mod}.biases"], gen)

    rewrite_safetensors(f, edit)
    return f, off


def _expected(fmt: str, path: Path, bits: int) -> dict[str, torch.Tensor]:
    """diffusers module -> dense fp32 ``q * scale + zero`` from the file's tensors (numpy unpacking)."""
    codes_leaf, scale_leaf, zero_leaf = LEAVES[fmt]
    if fmt == "gemlite":
        sd = load_state_dict(path / "state_dict.pt")
        tensors = {k: v for k, v in sd.items()}
    else:
        r = SafetensorsReader(path)
        tensors = {k: r.get(k) for k in r.keys()}
    out = {}
    for key in [k for k in tensors if k.endswith("." + scale_leaf) and f"{k.rpartition('.')[0]}.{zero_leaf}" in tensors]:
        mod = key.rpartition(".")[0]
        sc, zr = tensors[key], tensors[f"{mod}.{zero_leaf}"]
        if fmt == "gemlite":
            sc, zr = sc.t(), zr.t()
        k_in = sc.shape[1] * 128
        q = unpack_lsb(tensors[f"{mod}.{codes_leaf}"].numpy(), bits, k_in, axis=0 if fmt == "gemlite" else 1)
        out[mod] = file_formula(q, sc, zr)
    return out


def _check_all_layers(ckpt, expected: dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    qmap = bfl_quantized_layers(ckpt.meta.config)
    for bk, mods in qmap.items():
        want = torch.cat([expected[m] for m in mods], 0)
        got = ckpt.load_packed(bk).dequantize(torch.float32)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)) or torch.equal(got, want), bk


@pytest.mark.parametrize("variant", ["binary", "ternary"])
@pytest.mark.parametrize("fmt", ["gemlite", "mlx"])
def test_broken_relation_loads_as_q_times_scale_plus_zero(
    tiny: dict, tmp_path: Path, fmt: str, variant: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, off = (_broken_gemlite if fmt == "gemlite" else _broken_mlx)(tiny, tmp_path, variant)
    assert off > 0
    ckpt = open_checkpoint(path)
    with caplog.at_level(logging.INFO, logger="bonsai_core.formats.affine"):
        _check_all_layers(ckpt, _expected(fmt, path, BITS[variant]))
        for bk in ckpt.packed_shapes:  # a second read is not counted again
            ckpt.load_packed(bk)
    lines = [r.getMessage() for r in caplog.records if "not the exact Bonsai pair" in r.getMessage()]
    assert len(lines) == 1 and f": {off} of " in lines[0], lines
    assert ckpt.load_packed(next(iter(ckpt.packed_shapes))).is_affine


@pytest.mark.parametrize("fmt", ["gemlite", "mlx"])
def test_affine_pack_round_trips_through_canonical(tiny: dict, tmp_path: Path, fmt: str) -> None:
    path, _ = (_broken_gemlite if fmt == "gemlite" else _broken_mlx)(tiny, tmp_path, "binary")
    src = open_checkpoint(path)
    canon = convert(path, tmp_path / "affine.safetensors")
    r = SafetensorsReader(canon)
    assert r.metadata["bonsai_format_version"] == "2" and any(k.endswith("." + ZERO_LEAF) for k in r.keys())
    back = open_checkpoint(canon)
    for bk in src.packed_shapes:
        a, b = src.load_packed(bk), back.load_packed(bk)
        assert a.is_affine == b.is_affine and a.scales.dtype == b.scales.dtype, bk
        assert torch.equal(a.dequantize(), b.dequantize()), bk
    # canonical -> the file's own layout -> canonical keeps every value
    again = convert(canon, tmp_path / "out" / "pack", to=fmt)
    assert all(torch.equal(src.load_packed(k).dequantize(), open_checkpoint(again).load_packed(k).dequantize()) for k in src.packed_shapes)


def test_exact_packs_stay_canonical_version_1(tiny: dict, tmp_path: Path) -> None:
    canon = convert(tiny[("binary", "gemlite")], tmp_path / "exact.safetensors")
    r = SafetensorsReader(canon)
    assert r.metadata["bonsai_format_version"] == "1" and not any(k.endswith("." + ZERO_LEAF) for k in r.keys())
    ckpt = open_checkpoint(tiny[("binary", "mlx")])
    assert not any(ckpt.load_packed(k).is_affine for k in ckpt.packed_shapes)


@pytest.mark.parametrize("to", ["gguf", "unpacked"])
def test_layouts_without_zeros_refuse_an_affine_layer_in_one_line(tiny: dict, tmp_path: Path, to: str) -> None:
    path, _ = _broken_gemlite(tiny, tmp_path, "binary")
    dst = tmp_path / ("out.gguf" if to == "gguf" else "out")
    with pytest.raises(BonsaiFormatError, match=f"affine layer .* {'GGUF' if to == 'gguf' else 'unpacked'}") as ei:
        convert(path, dst, to=to)
    assert "\n" not in str(ei.value) and ei.value.tensor
    assert not dst.exists() or (dst.is_dir() and not any(dst.iterdir()))


def test_mlx_export_refuses_pairs_bf16_cannot_hold(tiny: dict, tmp_path: Path) -> None:
    path, _ = _broken_gemlite(tiny, tmp_path, "ternary")  # fp32 one-ulp scales are not bf16 values
    with pytest.raises(BonsaiFormatError, match="not representable in bf16"):
        convert(path, tmp_path / "m" / "pack", to="mlx")


@pytest.mark.parametrize("leaf, bad", [("zeros", float("nan")), ("scales", float("inf")), ("zeros", -float("inf"))])
def test_non_finite_scale_or_zero_names_file_tensor_row_group(tiny: dict, tmp_path: Path, leaf: str, bad: float) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, "binary")
    rewrite_state(pack, lambda sd: sd[f"{QKV}.{leaf}"].__setitem__((1, 3), bad))  # [group 1, row 3]
    with pytest.raises(BonsaiFormatError, match="row 3, group 1 .*must be finite") as ei:
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.{leaf}" and "state_dict.pt" in ei.value.path


def test_finite_pair_whose_values_overflow_is_refused(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, "binary")

    def edit(sd: dict) -> None:
        sd[f"{QKV}.scales"][0, 2] = 3e38
        sd[f"{QKV}.zeros"][0, 2] = 3e38

    rewrite_state(pack, edit)
    with pytest.raises(BonsaiFormatError, match="row 2, group 0: 1 \\* scale \\+ zero overflows"):
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")


def test_scale_dtype_table_matches_loaded_layers(tiny: dict, tmp_path: Path) -> None:
    path, _ = _broken_mlx(tiny, tmp_path, "ternary")
    ckpt = open_checkpoint(path)
    table = ckpt.extra["scale_dtypes"]
    for bk in ckpt.packed_shapes:
        p = ckpt.load_packed(bk)
        assert (table[bk], table.affine(bk)) == (p.scales.dtype, p.is_affine), bk
    assert np.isfinite(ckpt.load_packed(bk).dequantize().numpy()).all()
