"""Values are checked as each tensor is loaded: a NaN or infinite scale, a ternary code 3, a NaN
in a dense weight end as one BonsaiFormatError naming the file and the tensor, in every layout
(before, a corrupt pack rendered an all-black image "successfully"). Issue 9, item 5."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest
import torch
from crafted import poke

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.te_formats import read_hqq, read_te_mlx
from bonsai_tools.synth import QWEN3_TINY_CONFIG, random_te, write_hqq, write_mlx

QKV = "double_blocks.0.img_attn.qkv.weight"
F16_NAN, F16_INF = b"\x00\x7e", b"\x00\x7c"
BF16_NAN, BF16_INF, BF16_NEG_INF = b"\xc0\x7f", b"\x80\x7f", b"\x80\xff"
TE_MINI = {**QWEN3_TINY_CONFIG, "num_hidden_layers": 2, "vocab_size": 256}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def _load_fails(ckpt_path: Path, key: str, match: str, *, dense: bool = False) -> BonsaiFormatError:
    ckpt = open_checkpoint(ckpt_path)  # the header is fine: values are checked on load
    with pytest.raises(BonsaiFormatError, match=match) as ei:
        ckpt.load_dense(key) if dense else ckpt.load_packed(key)
    return ei.value


@pytest.mark.parametrize(("payload", "match"), [(F16_NAN, "nan"), (F16_INF, "inf")])
def test_canonical_non_finite_scale(tiny: dict, tmp_path: Path, payload: bytes, match: str) -> None:
    path = poke(_copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors"), QKV.replace("weight", "weight_scale"), 2, payload)
    err = _load_fails(path, QKV, match)
    assert err.path == str(path) and err.tensor == QKV and "row 0, group 1" in str(err)


def test_canonical_ternary_code_3(tiny: dict, tmp_path: Path) -> None:
    path = poke(_copy(tiny[("ternary", "canonical")], tmp_path / "c.safetensors"), QKV, 5, b"\x30")
    err = _load_fails(path, QKV, "code 3 at row 0, input 22")
    assert err.tensor == QKV


def test_canonical_dense_nan(tiny: dict, tmp_path: Path) -> None:
    path = poke(_copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors"), "img_in.weight", 6, BF16_NAN)
    err = _load_fails(path, "img_in.weight", "nan", dense=True)
    assert err.tensor == "img_in.weight" and "[0, 3]" in str(err)


def test_mlx_infinite_scale_and_bias(tiny: dict, tmp_path: Path) -> None:
    snap = _copy(tiny[("binary", "mlx")], tmp_path / "snap")
    f = snap / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    mod = "transformer_blocks.0.attn.to_k"
    poke(f, f"{mod}.scales", 0, BF16_INF)  # scale 2s = inf and bias -s = -inf agree, so only the value check catches it
    poke(f, f"{mod}.biases", 0, BF16_NEG_INF)
    err = _load_fails(snap, QKV, "inf")
    assert err.path == str(f) and err.tensor == f"{mod}.scales"  # the first non-finite tensor of the pair


def test_gemlite_nan_zeros(tiny: dict, tmp_path: Path) -> None:
    snap = _copy(tiny[("ternary", "gemlite")], tmp_path / "snap")
    sd_path = snap / "transformer-gemlite-int2" / "state_dict.pt"
    sd = {k: v.clone() for k, v in load_state_dict(sd_path).items()}
    sd["transformer_blocks.0.attn.to_v.zeros"][0, 0] = float("nan")
    torch.save(sd, sd_path)
    err = _load_fails(snap, QKV, "nan")
    assert err.path == str(sd_path) and err.tensor == "transformer_blocks.0.attn.to_v.zeros"  # the tensor holding the NaN


def test_gguf_nan_block_scale(tiny: dict, tmp_path: Path) -> None:
    path = _copy(tiny[("binary", "gguf")], tmp_path / "m.gguf")
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == QKV)
    raw = bytearray(path.read_bytes())
    raw[t.data_offset : t.data_offset + 2] = F16_NAN  # the first block's fp16 d
    path.write_bytes(bytes(raw))
    err = _load_fails(path, QKV, "nan")
    assert err.tensor == QKV and "row 0, group 0" in str(err)


def test_te_mlx_nan_scale(tmp_path: Path) -> None:
    write_mlx(random_te(TE_MINI, "mlx", seed=2), tmp_path)
    key = "model.layers.1.mlp.down_proj"
    poke(tmp_path / "model.safetensors", f"{key}.scales", 0, BF16_NAN)
    with pytest.raises(BonsaiFormatError, match="NaN") as ei:
        read_te_mlx(tmp_path)
    assert ei.value.tensor == f"{key}.weight"


def test_te_hqq_infinite_scale(tmp_path: Path) -> None:
    te = random_te(TE_MINI, "hqq", seed=2)
    te.packed["model.layers.0.self_attn.q_proj.weight"].scales[0, 0] = float("inf")
    write_hqq(te, tmp_path)
    with pytest.raises(BonsaiFormatError, match="NaN or an infinity") as ei:
        read_hqq(tmp_path)
    assert ei.value.tensor == "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_check_dense_values_finds_every_non_finite(dtype: torch.dtype, bad: float, shape: tuple[int, ...]) -> None:
    from bonsai_core.packing import all_finite, check_dense_values

    t = torch.ones(shape, dtype=dtype)
    assert all_finite(t) and check_dense_values(t) is t
    t.view(-1)[-1] = bad
    assert not all_finite(t)
    with pytest.raises(BonsaiFormatError, match="weights must be finite"):
        check_dense_values(t, "f.safetensors", "w")
    assert all_finite(torch.empty(0, dtype=dtype))


@pytest.mark.parametrize("bad", [torch.tensor([float("nan"), 256.0]), torch.tensor([0, 256], dtype=torch.int32), torch.tensor([256])])
def test_gemlite_bad_orig_shape(tiny: dict, tmp_path: Path, bad: torch.Tensor) -> None:
    snap = _copy(tiny[("ternary", "gemlite")], tmp_path / "snap")
    sd_path = snap / "transformer-gemlite-int2" / "state_dict.pt"
    sd = {k: v.clone() for k, v in load_state_dict(sd_path).items()}
    sd["transformer_blocks.0.attn.to_q.orig_shape"] = bad
    torch.save(sd, sd_path)
    with pytest.raises(BonsaiFormatError, match="two positive integers") as ei:
        open_checkpoint(snap)
    assert ei.value.tensor == "transformer_blocks.0.attn.to_q.orig_shape"


@pytest.mark.parametrize(("key", "shape"), [("img_in.weight", [256, 64]), ("double_blocks.0.img_attn.norm.query_norm.scale", [64])])
def test_canonical_dense_shape_must_match_the_metadata_geometry(tiny: dict, tmp_path: Path, key: str, shape: list[int]) -> None:
    """A dense tensor of another size than the metadata's geometry is refused from the header."""
    from crafted import rewrite_header

    def shrink(h: dict) -> None:
        start = h[key]["data_offsets"][0]
        h[key]["shape"] = shape
        h[key]["data_offsets"] = [start, start + 2 * int(torch.tensor(shape).prod())]

    path = rewrite_header(_copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors"), shrink)
    with pytest.raises(BonsaiFormatError, match="does not match the metadata's geometry") as ei:
        open_checkpoint(path)
    assert ei.value.tensor == key
