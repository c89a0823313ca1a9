"""Bad input: each case is one BonsaiFormatError naming the file and (where there is one) the tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from core_helpers import SEED

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import FORMATS, open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.safetensors_io import SafetensorsReader, TensorSpec, write_safetensors
from bonsai_tools.synth import make_fixture, synthetic_checkpoint

QKV = "transformer_blocks.0.attn.to_q"  # first quantized diffusers linear


def _raises(path: Path | str, tensor: str | None = None, match: str = "", variant: str | None = None) -> BonsaiFormatError:
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(path, variant)
    err = ei.value
    assert str(path) in err.path or Path(err.path).resolve().is_relative_to(Path(path).resolve()), (err.path, path)
    if tensor is not None:
        assert err.tensor == tensor, str(err)
        assert f"'{tensor}'" in str(err)
    if match:
        assert match in str(err), str(err)
    return err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def _gemlite(tiny: dict, tmp_path: Path, variant: str = "ternary") -> tuple[Path, Path]:
    root = _copy(tiny[(variant, "gemlite")], tmp_path / "snap")
    pack = root / f"transformer-gemlite-int{1 if variant == 'binary' else 2}"
    return root, pack


def _rewrite_state(pack: Path, edit) -> None:  # type: ignore[no-untyped-def]
    sd = {k: v.clone() for k, v in load_state_dict(pack / "state_dict.pt").items()}  # clone: the file is mmapped
    edit(sd)
    torch.save(sd, pack / "state_dict.pt")


def _rewrite_st(path: Path, edit, metadata: dict | None = None) -> None:  # type: ignore[no-untyped-def]
    r = SafetensorsReader(path)
    tensors = {k: r.get(k).clone() for k in r.keys()}
    md = dict(r.metadata) if metadata is None else metadata
    edit(tensors)
    write_safetensors(path, [TensorSpec(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()], md)


# --- pickles ---------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_is_refused_and_never_runs(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    marker = tmp_path / "pwned"
    sd = {k: v.clone() for k, v in load_state_dict(pack / "state_dict.pt").items()}  # clone: the file is mmapped
    sd["payload"] = _Evil(str(marker))  # type: ignore[assignment]
    torch.save(sd, pack / "state_dict.pt")
    assert not marker.exists()
    err = _raises(pack, None, "refusing to unpickle")
    assert err.path == str(pack / "state_dict.pt")
    assert not marker.exists()
    # the payload is real: an unrestricted load does run it
    torch.load(pack / "state_dict.pt", weights_only=False)
    assert marker.exists()


def test_pickle_holding_a_non_tensor_is_refused(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    _rewrite_state(pack, lambda sd: sd.__setitem__("x_embedder.weight", [1, 2, 3]))
    _raises(pack, "x_embedder.weight", "expected a tensor")


# --- truncation ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["canonical", "mlx", "unpacked", "gguf", "gemlite"])
def test_truncated_file(tiny: dict, tmp_path: Path, fmt: str) -> None:
    src = tiny[("binary", fmt)]
    dst = _copy(src, tmp_path / src.name)
    f = {
        "mlx": dst / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors",
        "unpacked": dst / "transformer" / "diffusion_pytorch_model.safetensors",
        "gemlite": dst / "transformer-gemlite-int1" / "state_dict.pt",
    }.get(fmt, dst)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(BonsaiFormatError) as ei:
        ckpt = open_checkpoint(dst)
        for _ in ckpt.items():  # GGUF memmaps lazily: truncation may show when reading
            pass
    assert ei.value.path == str(f)
    msg = str(ei.value).lower()
    assert "truncated" in msg or "corrupt" in msg
    if fmt in ("canonical", "mlx", "unpacked"):
        assert ei.value.tensor is not None  # safetensors: the first tensor whose data is cut off


# --- wrong shapes / dtypes -------------------------------------------------------------


def test_gemlite_wrong_w_q_shape(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    _rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.W_q", sd[f"{QKV}.W_q"][:-1].clone()))
    _raises(pack, f"{QKV}.W_q", "does not match")


def test_gemlite_wrong_orig_shape(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    _rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.orig_shape", torch.tensor([256, 384], dtype=torch.int32)))
    _raises(pack, f"{QKV}.weight", "shape [256, 384]")


@pytest.mark.parametrize("fmt", ["unpacked", "mlx"])
def test_dense_tensor_wrong_shape(tiny: dict, tmp_path: Path, fmt: str) -> None:
    root = _copy(tiny[("ternary", fmt)], tmp_path / "snap")
    f = root / ("transformer" if fmt == "unpacked" else "transformer-packed-mflux") / "diffusion_pytorch_model.safetensors"
    _rewrite_st(f, lambda t: t.__setitem__("proj_out.weight", t["proj_out.weight"][:, :128].contiguous()))
    _raises(root, "proj_out.weight", "shape [128, 128]")


def test_canonical_wrong_shape(tiny: dict, tmp_path: Path) -> None:
    f = _copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    key = "single_blocks.0.linear2.weight_scale"
    _rewrite_st(f, lambda t: t.__setitem__(key, t[key][:, :1].contiguous()))
    _raises(f, "single_blocks.0.linear2.weight", "mixed group size")


def test_gguf_wrong_shape(tiny: dict, tmp_path: Path) -> None:
    from bonsai_core.formats.gguf import write_gguf

    ckpt = synthetic_checkpoint("binary", "tiny", SEED)
    bad = "double_blocks.0.img_attn.norm.key_norm.scale"
    orig = ckpt.dense_shapes[bad]
    ckpt.dense_shapes[bad] = (orig[0], (64,))
    loader = ckpt.load_dense
    ckpt.load_dense = lambda k: loader(k)[:64] if k == bad else loader(k)  # type: ignore[method-assign]
    out = write_gguf(ckpt, tmp_path / "bad.gguf")
    _raises(out, None, "")  # geometry inference or shape check names the tensor
    with pytest.raises(BonsaiFormatError, match="key_norm|query_norm"):
        open_checkpoint(out)


# --- missing / broken JSON -------------------------------------------------------------


def test_gemlite_missing_quantization_config(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    (pack / "quantization_config.json").unlink()
    err = _raises(pack, None, "required JSON file is missing")
    assert err.path == str(pack / "quantization_config.json")


def test_gemlite_unparsable_config(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    (pack / "config.json").write_text("{not json")
    err = _raises(pack, None, "cannot parse JSON")
    assert err.path == str(pack / "config.json")


def test_config_json_disagreeing_with_weights(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("binary", "mlx")], tmp_path / "snap")
    cfg_path = root / "transformer-packed-mflux" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_layers"] = 5
    cfg_path.write_text(json.dumps(cfg))
    err = _raises(root, None, "config.json describes")
    assert err.path == str(cfg_path)


def test_group_size_other_than_128_in_json(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    q = json.loads((pack / "quantization_config.json").read_text())
    q["group_size"] = 64
    (pack / "quantization_config.json").write_text(json.dumps(q))
    _raises(pack, None, "group_size 64 is not supported")


# --- variants --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f].holds("binary")])
def test_binary_handed_to_ternary_reader(tiny: dict, fmt: str) -> None:
    err = _raises(tiny[("binary", fmt)], None, "expected a ternary checkpoint but this one is binary", variant="ternary")
    if fmt == "unpacked":
        assert err.tensor == f"{QKV}.weight" and "holds no zeros" in str(err)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f].holds("ternary")])
def test_ternary_handed_to_binary_reader(tiny: dict, fmt: str) -> None:
    _raises(tiny[("ternary", fmt)], None, "expected a binary checkpoint but this one is ternary", variant="binary")


def test_unknown_variant(tiny: dict) -> None:
    _raises(tiny[("binary", "canonical")], None, "unknown variant 'quaternary'", variant="quaternary")
    with pytest.raises(ValueError, match="unknown variant"):
        synthetic_checkpoint("quaternary")


def test_unknown_variant_in_canonical_metadata(tiny: dict, tmp_path: Path) -> None:
    f = _copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    md = dict(SafetensorsReader(f).metadata)
    md["variant"] = "quaternary"
    _rewrite_st(f, lambda t: None, md)
    _raises(f, None, "unknown variant")


def test_gemlite_folder_name_contradicts_bits(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path, "binary")
    renamed = pack.rename(pack.parent / "transformer-gemlite-int2")
    _raises(renamed, None, "folder is named transformer-gemlite-int2")


def test_gemlite_metadata_bits_contradict_json(tiny: dict, tmp_path: Path) -> None:
    """A binary pack whose JSON was edited to say 2-bit: the W_q shapes give it away."""
    _, pack = _gemlite(tiny, tmp_path, "binary")
    q = json.loads((pack / "quantization_config.json").read_text())
    q["bits"] = 2
    (pack / "quantization_config.json").write_text(json.dumps(q))
    renamed = pack.rename(pack.parent / "pack")
    _raises(renamed, f"{QKV}.W_q", "wrong bits or variant")


def test_ternary_gguf_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(BonsaiFormatError, match="binary weights only; this checkpoint is ternary"):
        make_fixture("ternary", "tiny", "gguf", SEED, tmp_path / "t.gguf")
    assert not (tmp_path / "t.gguf").exists()
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(tmp_path / "tq.gguf", "flux")
    w.add_tensor(
        "double_blocks.0.img_attn.qkv.weight", np.zeros((768, 256 // 256 * 66), np.uint8), raw_dtype=gguf.GGMLQuantizationType.TQ2_0
    )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _raises(tmp_path / "tq.gguf", "double_blocks.0.img_attn.qkv.weight", "ternary GGUF type")


# --- values that break the Bonsai relations --------------------------------------------


def test_gemlite_scale_zero_relation_broken(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path, "binary")

    def edit(sd: dict) -> None:
        sd[f"{QKV}.scales"][1, 3] *= 1.5

    _rewrite_state(pack, edit)
    ckpt = open_checkpoint(pack)
    with pytest.raises(BonsaiFormatError, match=r"row 3, group 1: scale .* != 2 \* \(-zeros\)") as ei:
        ckpt.load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.scales"


def test_gemlite_ternary_code_3(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path, "ternary")

    def edit(sd: dict) -> None:
        sd[f"{QKV}.W_q"][0, 5] = 0xFF  # four codes of 3

    _rewrite_state(pack, edit)
    with pytest.raises(BonsaiFormatError, match="code 3 at row 5, input 0") as ei:
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.W_q"


def test_mlx_ternary_code_3_and_bias_relation(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("ternary", "mlx")], tmp_path / "snap")
    f = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"

    def edit(t: dict) -> None:
        t[f"{QKV}.weight"][2, 0] = 0xFFFFFFFF

    _rewrite_st(f, edit)
    with pytest.raises(BonsaiFormatError, match="code 3 at row 2, input 0") as ei:
        open_checkpoint(root).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.weight" and ei.value.path == str(f)

    def edit2(t: dict) -> None:
        t[f"{QKV}.weight"][2, 0] = 0
        t[f"{QKV}.biases"][4, 1] = 0.5

    _rewrite_st(f, edit2)
    with pytest.raises(BonsaiFormatError, match=r"row 4, group 1: .* -biases") as ei:
        open_checkpoint(root).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.scales"


def test_gemlite_meta_scale_not_neutral(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)
    _rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.meta_scale", torch.tensor(0.5)))
    with pytest.raises(BonsaiFormatError, match="not neutral") as ei:
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.meta_scale"


@pytest.mark.parametrize("chunk", [1 << 23, 1024 * 3])  # one block; blocks of 3 rows (K = 1024): row 7 is in the third
def test_unpacked_not_two_or_three_values_per_group(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    import bonsai_core.formats.unpacked as unpacked

    monkeypatch.setattr(unpacked, "CHUNK_ELEMENTS", chunk)
    root = _copy(tiny[("ternary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    key = "single_transformer_blocks.1.attn.to_out.weight"

    def edit(t: dict) -> None:
        t[key][7, 300] = 0.123

    _rewrite_st(f, edit)
    ckpt = open_checkpoint(root)
    with pytest.raises(BonsaiFormatError, match=r"row 7, group 2 \(inputs 256..383\) holds values other than") as ei:
        ckpt.load_packed("single_blocks.1.linear2.weight")
    assert ei.value.tensor == key and ei.value.path == str(f)


def test_unpacked_binary_with_a_stray_zero(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    key = "transformer_blocks.0.ff.linear_out.weight"
    _rewrite_st(f, lambda t: t[key].__setitem__((3, 140), 0.0))
    with pytest.raises(BonsaiFormatError, match="row 3, group 1 .* holds a zero") as ei:
        open_checkpoint(root).load_packed("double_blocks.0.img_mlp.2.weight")
    assert ei.value.tensor == key


def test_unpacked_original_flux_weights_are_refused_up_front(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    _rewrite_st(f, lambda t: t.__setitem__(f"{QKV}.weight", torch.randn(t[f"{QKV}.weight"].shape).bfloat16()))
    _raises(root, f"{QKV}.weight", "row 0, group 0")


# --- mixed group sizes, inventory ------------------------------------------------------


def test_mlx_mixed_group_sizes(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("binary", "mlx")], tmp_path / "snap")
    f = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    m = "transformer_blocks.0.ff.linear_out"

    def edit(t: dict) -> None:  # re-express one layer with 64-groups (twice the scales)
        t[f"{m}.scales"] = t[f"{m}.scales"].repeat_interleave(2, 1).contiguous()
        t[f"{m}.biases"] = t[f"{m}.biases"].repeat_interleave(2, 1).contiguous()

    _rewrite_st(f, edit)
    _raises(root, None, "")
    with pytest.raises(BonsaiFormatError, match=m):
        open_checkpoint(root)


def test_gemlite_mixed_group_size_metadata(tiny: dict, tmp_path: Path) -> None:
    _, pack = _gemlite(tiny, tmp_path)

    def edit(sd: dict) -> None:
        sd[f"{QKV}.metadata"][2] = 64

    _rewrite_state(pack, edit)
    _raises(pack, f"{QKV}.metadata", "mixed group sizes")


def test_missing_and_unexpected_tensors(tiny: dict, tmp_path: Path) -> None:
    root = _copy(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    _rewrite_st(f, lambda t: t.pop("transformer_blocks.0.attn.norm_added_k.weight"))
    _raises(root, "transformer_blocks.0.attn.norm_added_k.weight", "tensor is missing")
    root2 = _copy(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    _rewrite_st(root2, lambda t: t.__setitem__("lora_unet.alpha", torch.ones(1)))
    _raises(root2, "lora_unet.alpha", "unexpected tensor")


def test_skip_list_layer_stored_packed_is_refused(tiny: dict, tmp_path: Path) -> None:
    from bonsai_core.formats.gemlite import gemlite_layer
    from bonsai_core.packing import quantize_exact

    _, pack = _gemlite(tiny, tmp_path, "binary")

    def edit(sd: dict) -> None:
        w = sd.pop("proj_out.weight")
        sign = torch.where(w >= 0, 1.0, -1.0) * 0.25
        from bonsai_core.packing import PackedWeight

        codes, scales, bits = quantize_exact(sign, 1)
        for leaf, t in gemlite_layer(PackedWeight(codes, scales, bits)).items():
            sd[f"proj_out.{leaf}"] = t

    _rewrite_state(pack, edit)
    _raises(pack, "proj_out.weight", "skip list")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _raises(tmp_path / "notes.txt", None, "unrecognized file")
    _raises(tmp_path, None, "no Bonsai transformer found")
    _raises(tmp_path / "missing.safetensors", None, "no such file")
    (tmp_path / "x.gguf").write_bytes(b"nope")
    _raises(tmp_path / "x.gguf", None, "GGUF magic")
