"""Bad input: each case is one BonsaiFormatError naming the file and (where there is one) the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bad_input_helpers import QKV, copy_fixture, gemlite_copy, raises_format_error, rewrite_safetensors, rewrite_state
from core_helpers import SEED

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import FORMATS, open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.safetensors_io import SafetensorsReader
from bonsai_tools.synth import make_fixture, synthetic_checkpoint

# --- pickles ---------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_is_refused_and_never_runs(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    marker = tmp_path / "pwned"
    sd = {k: v.clone() for k, v in load_state_dict(pack / "state_dict.pt").items()}  # clone: the file is mmapped
    sd["payload"] = _Evil(str(marker))  # type: ignore[assignment]
    torch.save(sd, pack / "state_dict.pt")
    assert not marker.exists()
    err = raises_format_error(pack, None, "refusing to unpickle")
    assert err.path == str(pack / "state_dict.pt")
    assert not marker.exists()
    # the payload is real: an unrestricted load does run it
    torch.load(pack / "state_dict.pt", weights_only=False)
    assert marker.exists()


def test_pickle_holding_a_non_tensor_is_refused(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    rewrite_state(pack, lambda sd: sd.__setitem__("x_embedder.weight", [1, 2, 3]))
    raises_format_error(pack, "x_embedder.weight", "expected a tensor")


# --- truncation ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["canonical", "mlx", "unpacked", "gguf", "gemlite"])
def test_truncated_file(tiny: dict, tmp_path: Path, fmt: str) -> None:
    src = tiny[("binary", fmt)]
    dst = copy_fixture(src, tmp_path / src.name)
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
    _, pack = gemlite_copy(tiny, tmp_path)
    rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.W_q", sd[f"{QKV}.W_q"][:-1].clone()))
    raises_format_error(pack, f"{QKV}.W_q", "does not match")


def test_gemlite_wrong_orig_shape(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.orig_shape", torch.tensor([256, 384], dtype=torch.int32)))
    raises_format_error(pack, f"{QKV}.weight", "shape [256, 384]")


@pytest.mark.parametrize("fmt", ["unpacked", "mlx"])
def test_dense_tensor_wrong_shape(tiny: dict, tmp_path: Path, fmt: str) -> None:
    root = copy_fixture(tiny[("ternary", fmt)], tmp_path / "snap")
    f = root / ("transformer" if fmt == "unpacked" else "transformer-packed-mflux") / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(f, lambda t: t.__setitem__("proj_out.weight", t["proj_out.weight"][:, :128].contiguous()))
    raises_format_error(root, "proj_out.weight", "shape [128, 128]")


def test_canonical_wrong_shape(tiny: dict, tmp_path: Path) -> None:
    f = copy_fixture(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    key = "single_blocks.0.linear2.weight_scale"
    rewrite_safetensors(f, lambda t: t.__setitem__(key, t[key][:, :1].contiguous()))
    raises_format_error(f, "single_blocks.0.linear2.weight", "mixed group size")


def test_gguf_wrong_shape(tiny: dict, tmp_path: Path) -> None:
    from bonsai_core.formats.gguf import write_gguf

    ckpt = synthetic_checkpoint("binary", "tiny", SEED)
    bad = "double_blocks.0.img_attn.norm.key_norm.scale"
    orig = ckpt.dense_shapes[bad]
    ckpt.dense_shapes[bad] = (orig[0], (64,))
    loader = ckpt.load_dense
    ckpt.load_dense = lambda k: loader(k)[:64] if k == bad else loader(k)  # type: ignore[method-assign]
    out = write_gguf(ckpt, tmp_path / "bad.gguf")
    raises_format_error(out, None, "")  # geometry inference or shape check names the tensor
    with pytest.raises(BonsaiFormatError, match="key_norm|query_norm"):
        open_checkpoint(out)


# --- missing / broken JSON -------------------------------------------------------------


def test_gemlite_missing_quantization_config_and_unreadable_metadata(tiny: dict, tmp_path: Path) -> None:
    # without the JSON the layers' own metadata says the bits (tests/core/test_gemlite_variants.py);
    # when a layer's metadata cannot say either, one line names the missing file
    _, pack = gemlite_copy(tiny, tmp_path)
    (pack / "quantization_config.json").unlink()
    rewrite_state(pack, lambda sd: sd.__setitem__(f"{QKV}.metadata", torch.zeros(2, dtype=torch.float32)))
    err = raises_format_error(pack, None, "is missing, and layer")
    assert err.path == str(pack / "quantization_config.json") and "quantization_config.json next to" in str(err)


def test_gemlite_unparsable_config(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    (pack / "config.json").write_text("{not json")
    err = raises_format_error(pack, None, "cannot parse JSON")
    assert err.path == str(pack / "config.json")


def test_config_json_disagreeing_with_weights(tiny: dict, tmp_path: Path) -> None:
    root = copy_fixture(tiny[("binary", "mlx")], tmp_path / "snap")
    cfg_path = root / "transformer-packed-mflux" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_layers"] = 5
    cfg_path.write_text(json.dumps(cfg))
    err = raises_format_error(root, None, "config.json describes")
    assert err.path == str(cfg_path)


def test_group_size_other_than_128_in_json(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path)
    q = json.loads((pack / "quantization_config.json").read_text())
    q["group_size"] = 64
    (pack / "quantization_config.json").write_text(json.dumps(q))
    raises_format_error(pack, None, "group_size 64 is not supported")


# --- variants --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f].holds("binary")])
def test_binary_handed_to_ternary_reader(tiny: dict, fmt: str) -> None:
    err = raises_format_error(tiny[("binary", fmt)], None, "expected a ternary checkpoint but this one is binary", variant="ternary")
    if fmt == "unpacked":
        assert err.tensor == f"{QKV}.weight" and "holds no zeros" in str(err)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f].holds("ternary")])
def test_ternary_handed_to_binary_reader(tiny: dict, fmt: str) -> None:
    raises_format_error(tiny[("ternary", fmt)], None, "expected a binary checkpoint but this one is ternary", variant="binary")


def test_unknown_variant(tiny: dict) -> None:
    raises_format_error(tiny[("binary", "canonical")], None, "unknown variant 'quaternary'", variant="quaternary")
    with pytest.raises(ValueError, match="unknown variant"):
        synthetic_checkpoint("quaternary")


def test_unknown_variant_in_canonical_metadata(tiny: dict, tmp_path: Path) -> None:
    f = copy_fixture(tiny[("binary", "canonical")], tmp_path / "c.safetensors")
    md = dict(SafetensorsReader(f).metadata)
    md["variant"] = "quaternary"
    rewrite_safetensors(f, lambda t: None, md)
    raises_format_error(f, None, "unknown variant")


def test_gemlite_folder_name_contradicts_bits(tiny: dict, tmp_path: Path) -> None:
    _, pack = gemlite_copy(tiny, tmp_path, "binary")
    renamed = pack.rename(pack.parent / "transformer-gemlite-int2")
    raises_format_error(renamed, None, "folder is named transformer-gemlite-int2")


def test_gemlite_metadata_bits_contradict_json(tiny: dict, tmp_path: Path) -> None:
    """A binary pack whose JSON was edited to say 2-bit: the W_q shapes give it away."""
    _, pack = gemlite_copy(tiny, tmp_path, "binary")
    q = json.loads((pack / "quantization_config.json").read_text())
    q["bits"] = 2
    (pack / "quantization_config.json").write_text(json.dumps(q))
    renamed = pack.rename(pack.parent / "pack")
    raises_format_error(renamed, f"{QKV}.W_q", "wrong bits or variant")


def test_ternary_gguf_export_is_refused_clearly(tmp_path: Path) -> None:
    """The GGUF writer is binary only (ternary GGUFs are read: tests/conformance/test_conformance_gguf.py)."""
    with pytest.raises(BonsaiFormatError, match="binary weights only; this checkpoint is ternary"):
        make_fixture("ternary", "tiny", "gguf", SEED, tmp_path / "t.gguf")
    assert not (tmp_path / "t.gguf").exists()
