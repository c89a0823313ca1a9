"""Bad values and inventories: broken Bonsai relations (scale/zero, code 3, values per group), mixed group
sizes, missing or unexpected tensors. Each case is one BonsaiFormatError naming the file and the tensor,
except a broken scale/zero relation, which loads as an affine layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bad_input_helpers import QKV, copy_fixture, gemlite_copy, raises_format_error, rewrite_safetensors, rewrite_state

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict

# --- values that break the Bonsai relations --------------------------------------------


def test_gemlite_scale_zero_relation_broken_loads_affine(tiny: dict, tmp_path: Path) -> None:
    # a broken relation is not a broken file: the layer keeps the file's (scale, zero) pair
    _, pack = gemlite_copy(tiny, tmp_path, "binary")

    def edit(sd: dict) -> None:
        sd[f"{QKV}.scales"][1, 3] *= 1.5

    rewrite_state(pack, edit)
    p = open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert p.is_affine
    sd = load_state_dict(pack / "state_dict.pt")
    scale, zero = sd[f"{QKV}.scales"][1, 3].item(), sd[f"{QKV}.zeros"][1, 3].item()
    w = p.dequantize()[3, 128:256]
    assert set(w.tolist()) <= {zero, torch.tensor(scale + zero, dtype=torch.float32).item()}


def test_gemlite_ternary_code_3(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, "ternary")

    def edit(sd: dict) -> None:
        sd[f"{QKV}.W_q"][0, 5] = 0xFF  # four codes of 3

    rewrite_state(pack, edit)
    with pytest.raises(BonsaiFormatError, match="code 3 at row 5, input 0") as ei:
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.W_q"


def test_mlx_ternary_code_3_and_bias_relation(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("ternary", "mlx")], tmp_path / "snap")
    f = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"

    def edit(t: dict) -> None:
        t[f"{QKV}.weight"][2, 0] = 0xFFFFFFFF

    rewrite_safetensors(f, edit)
    with pytest.raises(BonsaiFormatError, match="code 3 at row 2, input 0") as ei:
        open_checkpoint(root).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.weight" and ei.value.path == str(f)

    def edit2(t: dict) -> None:
        t[f"{QKV}.weight"][2, 0] = 0
        t[f"{QKV}.biases"][4, 1] = 0.5

    rewrite_safetensors(f, edit2)  # bias != -scale: loads affine, the group's values are q * scale + 0.5
    p = open_checkpoint(root).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert p.is_affine and p.zeros[4, 1].item() == 0.5
    assert set(p.dequantize()[4, 128:256].tolist()) <= {(q * p.scales[4, 1].float() + 0.5).item() for q in (0, 1, 2)}


def test_gemlite_meta_scale_not_neutral(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.meta_scale", torch.tensor(0.5)))
    with pytest.raises(BonsaiFormatError, match="not neutral") as ei:
        open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert ei.value.tensor == f"{QKV}.meta_scale"


@pytest.mark.parametrize("chunk", [1 << 23, 1024 * 3])  # one block; blocks of 3 rows (K = 1024): row 7 is in the third
def test_unpacked_not_two_or_three_values_per_group(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    import bonsai_core.formats.unpacked as unpacked

    monkeypatch.setattr(unpacked, "CHUNK_ELEMENTS", chunk)
    root = copy_fixture(tiny[("ternary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    key = "single_transformer_blocks.1.attn.to_out.weight"

    def edit(t: dict) -> None:
        t[key][7, 300] = 0.123

    rewrite_safetensors(f, edit)
    ckpt = open_checkpoint(root)
    with pytest.raises(BonsaiFormatError, match=r"row 7, group 2 \(inputs 256..383\) holds values other than") as ei:
        ckpt.load_packed("single_blocks.1.linear2.weight")
    assert ei.value.tensor == key and ei.value.path == str(f)


def test_unpacked_binary_with_a_stray_zero(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    key = "transformer_blocks.0.ff.linear_out.weight"
    rewrite_safetensors(f, lambda t: t[key].__setitem__((3, 140), 0.0))
    with pytest.raises(BonsaiFormatError, match="row 3, group 1 .* holds a zero") as ei:
        open_checkpoint(root).load_packed("double_blocks.0.img_mlp.2.weight")
    assert ei.value.tensor == key


def test_unpacked_original_flux_weights_are_refused_up_front(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(f, lambda t: t.__setitem__(f"{QKV}.weight", torch.randn(t[f"{QKV}.weight"].shape).bfloat16()))
    raises_format_error(root, f"{QKV}.weight", "row 0, group 0")


# --- mixed group sizes, inventory ------------------------------------------------------


def test_mlx_mixed_group_sizes(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("binary", "mlx")], tmp_path / "snap")
    f = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    m = "transformer_blocks.0.ff.linear_out"

    def edit(t: dict) -> None:  # re-express one layer with 64-groups (twice the scales)
        t[f"{m}.scales"] = t[f"{m}.scales"].repeat_interleave(2, 1).contiguous()
        t[f"{m}.biases"] = t[f"{m}.biases"].repeat_interleave(2, 1).contiguous()

    rewrite_safetensors(f, edit)
    raises_format_error(root, None, "")
    with pytest.raises(BonsaiFormatError, match=m):
        open_checkpoint(root)


def test_gemlite_mixed_group_size_metadata(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)

    def edit(sd: dict) -> None:
        sd[f"{QKV}.metadata"][2] = 64

    rewrite_state(pack, edit)
    raises_format_error(pack, f"{QKV}.metadata", "mixed group sizes")


def test_missing_and_unexpected_tensors(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("binary", "unpacked")], tmp_path / "snap")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(f, lambda t: t.pop("transformer_blocks.0.attn.norm_added_k.weight"))
    raises_format_error(root, "transformer_blocks.0.attn.norm_added_k.weight", "tensor is missing")
    root2 = copy_fixture(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    rewrite_safetensors(root2, lambda t: t.__setitem__("lora_unet.alpha", torch.ones(1)))
    raises_format_error(root2, "lora_unet.alpha", "unexpected tensor")


def test_skip_list_layer_stored_packed_is_refused(tiny: dict, tmp_path: Path) -> None:
    from bonsai_core.formats.gemlite import gemlite_layer
    from bonsai_core.packing import quantize_exact

    _, pack = gemlite_copy(tiny, tmp_path, "binary")

    def edit(sd: dict) -> None:
        w = sd.pop("proj_out.weight")
        sign = torch.where(w >= 0, 1.0, -1.0) * 0.25
        from bonsai_core.packing import PackedWeight

        codes, scales, bits = quantize_exact(sign, 1)
        for leaf, t in gemlite_layer(PackedWeight(codes, scales, bits)).items():
            sd[f"proj_out.{leaf}"] = t

    rewrite_state(pack, edit)
    raises_format_error(pack, "proj_out.weight", "skip list")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    raises_format_error(tmp_path / "notes.txt", None, "unrecognized file")
    raises_format_error(tmp_path, None, "no Bonsai transformer found")
    raises_format_error(tmp_path / "missing.safetensors", None, "no such file")
    (tmp_path / "x.gguf").write_bytes(b"nope")
    raises_format_error(tmp_path / "x.gguf", None, "GGUF magic")
