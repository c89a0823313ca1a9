"""gemlite packs as people have them: a loose ``state_dict.pt`` without its JSON files (any name), gemlite
leaves saved as safetensors (detected as gemlite, not MLX), and a non-contiguous ``W_q`` (gemlite's
``data_contiguous`` 0: a transposed view saved by ``torch.save``). Each loads the same weights as the
released folder. (Before: refused for the missing JSON, misread as MLX, untested respectively.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from bad_input_helpers import gemlite_copy, rewrite_state
from core_helpers import assert_same_weights

from bonsai_core.formats import detect_format, open_checkpoint
from bonsai_core.formats.gemlite import MD_CONTIGUOUS, load_state_dict
from bonsai_core.safetensors_io import TensorSpec, write_safetensors


@pytest.mark.parametrize("variant", ["binary", "ternary"])
def test_loose_state_dict_without_json_files(tiny: dict, tmp_path: Path, variant: str) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, variant)
    loose = tmp_path / "downloads" / "bonsai-transformer.pt"  # renamed, alone in a folder
    loose.parent.mkdir()
    shutil.copy(pack / "state_dict.pt", loose)
    assert detect_format(loose) == ("gemlite", loose)
    ckpt = open_checkpoint(loose, variant)
    assert ckpt.meta.variant == variant and ckpt.meta.config == open_checkpoint(pack).meta.config
    assert_same_weights(ckpt, open_checkpoint(pack))
    only = tmp_path / "only"  # the folder form: state_dict.pt without config.json / quantization_config.json
    only.mkdir()
    shutil.copy(pack / "state_dict.pt", only / "state_dict.pt")
    assert_same_weights(open_checkpoint(only), ckpt)


def test_loose_state_dict_layers_disagree_on_bits(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, "binary")
    (pack / "quantization_config.json").unlink()

    def edit(sd: dict) -> None:
        sd["transformer_blocks.0.attn.to_k.metadata"][1] = 2

    rewrite_state(pack, edit)
    with pytest.raises(Exception, match="layers disagree") as ei:
        open_checkpoint(pack)
    assert ei.value.tensor == "transformer_blocks.0.attn.to_k.metadata"  # type: ignore[attr-defined]


@pytest.mark.parametrize("variant", ["binary", "ternary"])
def test_gemlite_leaves_in_safetensors_are_gemlite(tiny: dict, tmp_path: Path, variant: str) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, variant)
    sd = load_state_dict(pack / "state_dict.pt")
    folder = tmp_path / "transformer"  # as diffusers saves a quantized model: config.json + one safetensors
    folder.mkdir()
    shutil.copy(pack / "config.json", folder / "config.json")
    f = folder / "diffusion_pytorch_model.safetensors"
    write_safetensors(f, [TensorSpec(k, v.dtype, tuple(v.shape), lambda v=v: v.contiguous()) for k, v in sd.items()], {"format": "pt"})
    assert detect_format(f) == ("gemlite", f) and detect_format(folder) == ("gemlite", f)
    ckpt = open_checkpoint(folder, variant)
    assert ckpt.meta.source_format == "gemlite"
    assert_same_weights(ckpt, open_checkpoint(pack))


@pytest.mark.parametrize("variant", ["binary", "ternary"])
def test_non_contiguous_w_q_gives_identical_codes(tiny: dict, tmp_path: Path, variant: str) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, variant)
    before = open_checkpoint(pack)
    codes = {k: before.load_packed(k).codes.clone() for k in before.packed_shapes}

    def edit(sd: dict) -> None:
        for key in [k for k in sd if k.endswith(".W_q")]:
            sd[key] = sd[key].t().contiguous().t()  # [K*bits/8, N] view of an [N, K*bits/8] storage
            assert not sd[key].is_contiguous()
            sd[key[: -len("W_q")] + "metadata"][MD_CONTIGUOUS] = 0

    _, copy = gemlite_copy(tiny, tmp_path / "nc", variant)
    rewrite_state(copy, edit)
    stored = load_state_dict(copy / "state_dict.pt")
    assert not stored["transformer_blocks.0.attn.to_q.W_q"].is_contiguous()  # the view survived torch.save
    after = open_checkpoint(copy)
    for k, c in codes.items():
        assert torch.equal(after.load_packed(k).codes, c), k
