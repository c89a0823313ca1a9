"""Every reader against the unpacked reference, writers and readers as inverses, detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from core_helpers import FORMATS, SEED, VARIANTS, assert_same_weights, safetensors_body

from bonsai_core.canonical import load_canonical, save_canonical
from bonsai_core.convert import write_checkpoint
from bonsai_core.formats import detect_format, get_format, open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.klein import KLEIN_TINY, bfl_dense_tensors, bfl_quantized_layers
from bonsai_tools.synth import synthetic_checkpoint

PAIRS = [(v, f) for v in VARIANTS for f in FORMATS if get_format(f).holds(v)]


@pytest.fixture(scope="module")
def unpacked_reference(tiny: dict) -> dict:
    """The unpacked fixture of each variant, read back, dequantized once (fp32)."""
    out = {}
    for v in VARIANTS:
        ref = open_checkpoint(tiny[(v, "unpacked")])
        out[v] = (
            {k: ref.load_packed(k).dequantize(torch.float32) for k in ref.packed_shapes},
            {k: ref.load_dense(k).float() for k in ref.dense_shapes},
        )
    return out


@pytest.mark.parametrize(("variant", "fmt"), PAIRS)
def test_reader_matches_unpacked_reference_bit_exact(tiny: dict, unpacked_reference: dict, variant: str, fmt: str) -> None:
    ckpt = open_checkpoint(tiny[(variant, fmt)])
    assert ckpt.meta.source_format == fmt
    assert ckpt.meta.variant == variant and ckpt.meta.bits == {"binary": 1, "ternary": 2}[variant]
    assert ckpt.meta.config == KLEIN_TINY
    assert set(ckpt.packed_shapes) == set(bfl_quantized_layers(KLEIN_TINY))
    assert set(ckpt.dense_shapes) == set(bfl_dense_tensors(KLEIN_TINY))
    packed, dense = unpacked_reference[variant]
    for k in ckpt.packed_shapes:
        assert torch.equal(ckpt.load_packed(k).dequantize(torch.float32), packed[k]), k
    for k in ckpt.dense_shapes:
        assert torch.equal(ckpt.load_dense(k).float(), dense[k]), k


@pytest.mark.parametrize("variant", VARIANTS)
def test_unpacked_reference_is_the_generator(tiny: dict, variant: str) -> None:
    assert_same_weights(open_checkpoint(tiny[(variant, "unpacked")]), synthetic_checkpoint(variant, "tiny", SEED))


@pytest.mark.parametrize(("variant", "fmt"), PAIRS)
def test_canonical_round_trip_through_every_layout_is_byte_identical(tiny: dict, tmp_path: Path, variant: str, fmt: str) -> None:
    """canonical -> fmt -> canonical: every tensor's bytes, dtype, shape and order identical."""
    first = tiny[(variant, "canonical")]
    exported = write_checkpoint(load_canonical(first), tmp_path / {"gguf": "x.gguf", "canonical": "x.safetensors"}.get(fmt, "x"), fmt)
    again = tmp_path / "again.safetensors"
    save_canonical(open_checkpoint(exported), again)
    h1, d1 = safetensors_body(first)
    h2, d2 = safetensors_body(again)
    assert list(h1) == list(h2) and h1 == h2
    assert d1 == d2


@pytest.mark.parametrize(("variant", "fmt"), [p for p in PAIRS if p[1] != "canonical"])
def test_writer_inverts_reader(tiny: dict, tmp_path: Path, variant: str, fmt: str) -> None:
    """Read a released-layout file, write the same layout again: the stored tensors are identical."""
    src = tiny[(variant, fmt)]
    out = write_checkpoint(open_checkpoint(src), tmp_path / ("y.gguf" if fmt == "gguf" else "y"), fmt)
    if fmt == "gemlite":
        a, b = (
            load_state_dict(Path(src) / f"transformer-gemlite-int{1 if variant == 'binary' else 2}" / "state_dict.pt"),
            load_state_dict(out / "state_dict.pt"),
        )
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    elif fmt == "gguf":
        assert Path(src).read_bytes() == out.read_bytes()
    else:
        name = "transformer-packed-mflux" if fmt == "mlx" else "transformer"
        f = "diffusion_pytorch_model.safetensors"
        assert safetensors_body(Path(src) / name / f) == safetensors_body(out / f)
        for js in ("config.json", "quantization_config.json"):
            if (Path(src) / name / js).exists():
                assert (Path(src) / name / js).read_text() == (out / js).read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_detection_snapshot_root_subfolder_and_file(tiny: dict, variant: str) -> None:
    bits = 1 if variant == "binary" else 2
    root = tiny[(variant, "gemlite")]
    for p in (root, root / f"transformer-gemlite-int{bits}", root / f"transformer-gemlite-int{bits}" / "state_dict.pt"):
        assert detect_format(p)[0] == "gemlite"
        assert open_checkpoint(p, variant).meta.variant == variant
    for fmt, sub in (("mlx", "transformer-packed-mflux"), ("unpacked", "transformer")):
        root = tiny[(variant, fmt)]
        for p in (root, root / sub, root / sub / "diffusion_pytorch_model.safetensors"):
            assert detect_format(p)[0] == fmt
            assert open_checkpoint(p, variant).meta.source_format == fmt
    assert detect_format(tiny[(variant, "canonical")])[0] == "canonical"


def test_snapshot_with_unpacked_and_gemlite_inside_is_ambiguous(tiny: dict, tmp_path: Path) -> None:
    import shutil

    from bonsai_core.errors import BonsaiFormatError

    shutil.copytree(tiny[("binary", "gemlite")], tmp_path / "snap")
    shutil.copytree(tiny[("binary", "unpacked")] / "transformer", tmp_path / "snap" / "transformer")
    with pytest.raises(BonsaiFormatError, match="several transformer packs"):
        open_checkpoint(tmp_path / "snap")


def test_gemlite_06_meta_scale_is_accepted_when_neutral(tmp_path: Path) -> None:
    from bonsai_core.formats.gemlite import write_gemlite

    ckpt = synthetic_checkpoint("ternary", "tiny", SEED)
    out = write_gemlite(ckpt, tmp_path / "snap", gemlite_version="0.6")
    sd = load_state_dict(out / "state_dict.pt")
    assert sum(k.endswith(".meta_scale") for k in sd) == sum(1 for k in sd if k.endswith(".W_q"))
    assert_same_weights(open_checkpoint(tmp_path / "snap"), ckpt)


def test_gguf_q8_0_modulation_variant_reads_exactly(tmp_path: Path) -> None:
    """One community file stores *_modulation.lin as Q8_0: those dequantize (to fp32) exactly
    as the gguf package's reference does, everything else is unchanged."""
    import gguf
    import numpy as np

    from bonsai_core.formats.gguf import write_gguf

    ckpt = synthetic_checkpoint("binary", "tiny", SEED)
    out = write_gguf(ckpt, tmp_path / "q8.gguf", q8_modulation=True)
    got = open_checkpoint(out)
    reader = gguf.GGUFReader(out)
    q8 = {t.name: t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}
    assert sorted(q8) == sorted(k for k in ckpt.dense_shapes if k.endswith("_modulation.lin.weight"))
    for k, t in q8.items():
        ref = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType.Q8_0)
        assert got.dense_shapes[k][0] == torch.float32
        assert torch.equal(got.load_dense(k), torch.from_numpy(ref).reshape(ckpt.dense_shapes[k][1]))
        assert (got.load_dense(k) - ckpt.load_dense(k).float()).abs().max() < 1e-2  # it is an 8-bit copy
    for k in ckpt.packed_shapes:
        assert torch.equal(got.load_packed(k).dequantize(), ckpt.load_packed(k).dequantize())


def test_canonical_file_size_and_dtypes(tiny: dict) -> None:
    """Scales of the fixtures are fp16 in the canonical file; codes uint8; dense bf16."""
    from bonsai_core.safetensors_io import SafetensorsReader

    for variant in VARIANTS:
        r = SafetensorsReader(tiny[(variant, "canonical")])
        kinds = {r.dtype_name(k) for k in r.keys() if k.endswith("_scale")}
        assert kinds == {"F16"}
        assert {r.dtype_name(k) for k in bfl_quantized_layers(KLEIN_TINY)} == {"U8"}
        assert {r.dtype_name(k) for k in bfl_dense_tensors(KLEIN_TINY)} == {"BF16"}


def test_sharded_unpacked_with_index(tiny: dict, tmp_path: Path) -> None:
    import json

    from bonsai_core.safetensors_io import SafetensorsReader, TensorSpec, write_safetensors

    src = tiny[("ternary", "unpacked")] / "transformer" / "diffusion_pytorch_model.safetensors"
    r = SafetensorsReader(src)
    keys = r.keys()
    folder = tmp_path / "transformer"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(folder / name, [TensorSpec(k, r.get(k).dtype, r.shape(k), lambda k=k: r.get(k)) for k in part])
        weight_map.update(dict.fromkeys(part, name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.meta.source_format == "unpacked"
    assert_same_weights(ckpt, synthetic_checkpoint("ternary", "tiny", SEED))
