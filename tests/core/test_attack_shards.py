"""Every dense weight is checked like the packed ones, and a tensor lives in exactly one place.

The unpacked releases' bf16 ``text_encoder/``: one NaN is refused naming the shard and the
tensor (it rendered an all-black image before), the key set is exact, and a key present in two
shards is refused naming both files (the later one silently won). The same holds for the MLX text
encoder (a key under two name prefixes) and the unpacked transformer's shard index, whose values
must be plain file names (a list ended in a raw ``TypeError``). The HQQ text encoder is checked
against ``config.json`` before any weight is repacked. Issue 18, items 1, 4 and 10."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from crafted import append_tensor, poke

import bonsai_core.te_formats.hqq as hqq
from bonsai_core import cli
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.te_formats import expected_dense_shapes, expected_linear_shapes, read_dense_te, read_hqq, read_te_mlx
from bonsai_tools.synth import TE_CONFIGS, make_te_fixture, write_dense_te

BF16_NAN = torch.tensor([float("nan")], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
INDEX = "model.safetensors.index.json"


@pytest.fixture
def dense_te(tmp_path: Path) -> Path:
    return write_dense_te(TE_CONFIGS["tiny"], 3, tmp_path / "text_encoder")


def _weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX).read_text())["weight_map"]


def _write_map(folder: Path, weight_map: dict[str, object]) -> None:
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_dense_te_reads_exactly_the_expected_tensors(dense_te: Path) -> None:
    config, sd = read_dense_te(dense_te)
    assert set(sd) == set(expected_dense_shapes(config)) | set(expected_linear_shapes(config))
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all() for t in sd.values())


@pytest.mark.parametrize("key", ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"])
def test_one_nan_in_the_dense_te_is_refused_naming_shard_and_tensor(dense_te: Path, key: str) -> None:
    shard = dense_te / _weight_map(dense_te)[key]
    poke(shard, key, 2 * 7, BF16_NAN)
    with pytest.raises(BonsaiFormatError, match="finite") as ei:
        read_dense_te(dense_te)
    assert (ei.value.path, ei.value.tensor) == (str(shard), key)


def test_a_key_in_two_shards_is_refused_naming_both(dense_te: Path) -> None:
    wm = _weight_map(dense_te)
    key = "model.layers.0.input_layernorm.weight"
    first = wm[key]
    second = next(s for s in sorted(set(wm.values())) if s != first)
    append_tensor(dense_te / second, key, "BF16", [TE_CONFIGS["tiny"]["hidden_size"]], b"\0" * 2 * TE_CONFIGS["tiny"]["hidden_size"])
    with pytest.raises(BonsaiFormatError) as ei:
        read_dense_te(dense_te)
    assert ei.value.tensor == key and ei.value.path == str(dense_te / second) and first in str(ei.value), str(ei.value)
    (dense_te / INDEX).unlink()  # without an index every shard is read: still both files named
    with pytest.raises(BonsaiFormatError, match="two shards") as ei:
        read_dense_te(dense_te)
    assert {Path(ei.value.path).name, str(ei.value).split("also in ")[1].split(":")[0]} == {first, second}


def test_an_unexpected_dense_tensor_is_refused(dense_te: Path) -> None:
    shard = dense_te / sorted(set(_weight_map(dense_te).values()))[0]
    append_tensor(shard, "model.layers.7.extra.weight", "BF16", [2], b"\0" * 4)
    _write_map(dense_te, {**_weight_map(dense_te), "model.layers.7.extra.weight": shard.name})
    with pytest.raises(BonsaiFormatError, match="unexpected tensor") as ei:
        read_dense_te(dense_te)
    assert ei.value.tensor == "model.layers.7.extra.weight"


def test_dense_te_index_values_must_be_file_names(dense_te: Path) -> None:
    wm: dict[str, object] = dict(_weight_map(dense_te))
    wm["model.norm.weight"] = ["model-00001-of-00002.safetensors"]
    _write_map(dense_te, wm)
    with pytest.raises(BonsaiFormatError, match="not a plain file name") as ei:
        read_dense_te(dense_te)
    assert ei.value.tensor == "model.norm.weight"


def test_mlx_te_key_under_two_prefixes_is_refused(tmp_path: Path) -> None:
    folder = make_te_fixture("mlx", "tiny", 4, tmp_path / "te")
    f = folder / "model.safetensors"
    h = TE_CONFIGS["tiny"]["hidden_size"]
    append_tensor(f, "layers.0.input_layernorm.weight", "BF16", [h], b"\0" * 2 * h)  # = model.layers.0.input_layernorm.weight
    with pytest.raises(BonsaiFormatError, match="two places") as ei:
        read_te_mlx(folder)
    assert ei.value.path == str(f) and "layers.0.input_layernorm.weight" in (ei.value.tensor or "")


def test_hqq_te_is_checked_against_config_before_any_weight_is_repacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_te_fixture("hqq", "tiny", 4, tmp_path / "te")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] -= 1  # the file now holds a layer the config does not have
    (folder / "config.json").write_text(json.dumps(cfg))
    calls: list[str] = []
    real = hqq.hqq_unpack_to_codes
    monkeypatch.setattr(hqq, "hqq_unpack_to_codes", lambda *a: calls.append("x") or real(*a))
    with pytest.raises(BonsaiFormatError, match="unexpected tensor"):
        read_hqq(folder)
    assert calls == [], f"{len(calls)} weights were repacked before the inventory was checked"


# --- the unpacked transformer's shard index ---------------------------------------------------


@pytest.fixture
def unpacked_index(tiny: dict) -> Path:
    """The tiny unpacked file behind a shard index listing every key (as diffusers writes one)."""
    folder = tiny[("binary", "unpacked")] / "transformer"
    from bonsai_core.safetensors_io import read_header

    entries, _ = read_header(folder / "diffusion_pytorch_model.safetensors")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(entries, "diffusion_pytorch_model.safetensors")}))
    yield index
    index.unlink()


def test_unpacked_index_value_that_is_a_list_is_one_line_in_the_cli(unpacked_index: Path) -> None:
    """Before: a raw TypeError (unhashable list) from the CLI."""
    raw = json.loads(unpacked_index.read_text())
    raw["weight_map"]["x_embedder.weight"] = ["diffusion_pytorch_model.safetensors"]
    unpacked_index.write_text(json.dumps(raw))
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(handler)
    try:
        rc = cli.main(["inspect", str(unpacked_index)])
    finally:
        logging.getLogger().removeHandler(handler)
    assert rc == 2 and buf.getvalue().count("\n") == 1, buf.getvalue()
    assert "x_embedder.weight" in buf.getvalue() and "not a plain file name" in buf.getvalue()


def test_unpacked_shard_holding_a_key_the_index_does_not_place_there_is_refused(unpacked_index: Path) -> None:
    raw = json.loads(unpacked_index.read_text())
    del raw["weight_map"]["x_embedder.weight"]
    unpacked_index.write_text(json.dumps(raw))
    with pytest.raises(BonsaiFormatError, match="does not list it") as ei:
        open_checkpoint(unpacked_index)
    assert ei.value.tensor == "x_embedder.weight"


def test_gguf_tensor_under_two_name_prefixes_is_refused_naming_both(tiny: dict, tmp_path: Path) -> None:
    """``img_in.weight`` and ``model.diffusion_model.img_in.weight`` are the same tensor to the
    reader; before, the later one silently won."""
    import dataclasses

    from bonsai_core.formats.gguf import write_gguf

    src = open_checkpoint(tiny[("binary", "gguf")])
    twin = "model.diffusion_model.img_in.weight"
    ckpt = dataclasses.replace(
        src,
        dense_shapes={**src.dense_shapes, twin: src.dense_shapes["img_in.weight"]},
        load_dense=lambda k: src.load_dense("img_in.weight" if k == twin else k),
    )
    path = write_gguf(ckpt, tmp_path / "twins.gguf")
    with pytest.raises(BonsaiFormatError, match="two copies of img_in.weight") as ei:
        open_checkpoint(path)
    assert ei.value.path == str(path) and {ei.value.tensor, str(ei.value).split("same tensor as '")[1].split("'")[0]} == {
        "img_in.weight",
        twin,
    }
