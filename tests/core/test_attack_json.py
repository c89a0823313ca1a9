"""JSON configs and special files: NaN/Infinity/1e999, deep nesting, duplicate keys, huge
integers, oversized files, a FIFO or /dev/zero where a config or weight file belongs -- each one
BonsaiFormatError naming the file (and key), never a hang or a traceback. Issue 9, items 2 and 7."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bonsai_core.bounded import MAX_JSON_BYTES, loads_strict, read_json_object
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.te_formats import read_te
from bonsai_tools.synth import QWEN3_TINY_CONFIG, random_te, write_mlx

TE_MINI = {**QWEN3_TINY_CONFIG, "num_hidden_layers": 2, "vocab_size": 256}

BAD_JSON = {
    "nan": '{"num_layers": NaN}',
    "infinity": '{"num_layers": Infinity}',
    "minus_infinity": '{"mlp_ratio": -Infinity}',
    "1e999": '{"mlp_ratio": 1e999}',
    "huge_int": '{"num_layers": ' + "9" * 30 + "}",
    "deep": '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "nested_33": '{"a": ' + "[" * 40 + "]" * 40 + "}",
    "duplicate": '{"num_layers": 5, "num_layers": 1000000000}',
    "truncated": '{"num_layers": 5',
    "bad_utf8": b'{"a": "\xff"}',
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_strict_json_refuses(case: str) -> None:
    raw = BAD_JSON[case]
    with pytest.raises(BonsaiFormatError) as ei:
        loads_strict(raw.encode() if isinstance(raw, str) else raw, "cfg.json")
    assert ei.value.path == "cfg.json" and "\n" not in str(ei.value)


def test_strict_json_accepts_what_releases_write() -> None:
    cfg = {"num_layers": 5, "mlp_ratio": 3.0, "eps": 1e-06, "axes_dims_rope": [32, 32, 32, 32], "out_channels": None, "x": {"y": [True]}}
    assert loads_strict(json.dumps(cfg).encode(), "c") == cfg


@pytest.fixture
def gemlite_pack(tiny: dict, tmp_path: Path) -> Path:
    shutil.copytree(tiny[("ternary", "gemlite")], tmp_path / "snap")
    return tmp_path / "snap" / "transformer-gemlite-int2"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["config.json", "quantization_config.json"])
def test_fifo_config_does_not_hang(gemlite_pack: Path, name: str) -> None:
    (gemlite_pack / name).unlink()
    os.mkfifo(gemlite_pack / name)
    with pytest.raises(BonsaiFormatError, match="regular file") as ei:
        open_checkpoint(gemlite_pack)
    assert ei.value.path == str(gemlite_pack / name)


@pytest.mark.timeout(60)
def test_dev_zero_config_does_not_hang(gemlite_pack: Path) -> None:
    (gemlite_pack / "config.json").unlink()
    (gemlite_pack / "config.json").symlink_to("/dev/zero")
    with pytest.raises(BonsaiFormatError, match="regular file"):
        open_checkpoint(gemlite_pack)


@pytest.mark.parametrize(
    "edit",
    [
        '{"num_layers": 1e999}',
        '{"num_layers": NaN}',
        '{"num_layers": "5", "num_attention_heads": 2, "attention_head_dim": 128}',
        None,  # a sparse file over the size cap
    ],
)
def test_bad_transformer_config(gemlite_pack: Path, edit: str | None) -> None:
    cfg = gemlite_pack / "config.json"
    if edit is None:
        with open(cfg, "wb") as f:
            f.truncate(MAX_JSON_BYTES + 1)
    else:
        cfg.write_text(edit)
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(gemlite_pack)
    assert ei.value.path == str(cfg), str(ei.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "config",
    [
        "/dev/zero",
        '{"hidden_size": 1e999}',
        '{"num_hidden_layers": NaN}',
        "fifo",
        "[1, 2]",
    ],
)
def test_bad_text_encoder_config(tmp_path: Path, config: str) -> None:
    write_mlx(random_te(TE_MINI, "mlx", seed=1), tmp_path)
    cfg = tmp_path / "config.json"
    cfg.unlink()
    if config == "/dev/zero":
        cfg.symlink_to("/dev/zero")
    elif config == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.write_text(config)
    with pytest.raises(BonsaiFormatError) as ei:
        read_te(tmp_path)
    assert ei.value.path == str(cfg), str(ei.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "dangling"])
def test_special_file_as_model(tmp_path: Path, what: str) -> None:
    p = tmp_path / "model.safetensors"
    if what == "fifo":
        os.mkfifo(p)
    elif what == "dangling":
        p.symlink_to(tmp_path / "nowhere")
    else:
        p = Path("/dev/zero")
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(p)
    assert ei.value.path == str(p)


def test_read_json_object_absent_is_none_only_when_optional(tmp_path: Path) -> None:
    assert read_json_object(tmp_path / "none.json", required=False) is None
    with pytest.raises(BonsaiFormatError, match="missing"):
        read_json_object(tmp_path / "none.json")


def test_shard_index_cannot_point_outside_its_folder(tiny: dict, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    shutil.copytree(tiny[("binary", "unpacked")], snap)
    index = snap / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    (snap / "transformer" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "outside.safetensors")
    index.write_text(json.dumps({"weight_map": {"x_embedder.weight": "../../outside.safetensors"}}))
    with pytest.raises(BonsaiFormatError, match="not a plain file name") as ei:
        open_checkpoint(snap)
    assert ei.value.path == str(index) and ei.value.tensor == "x_embedder.weight"
