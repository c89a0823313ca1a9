"""Memory bombs: a small file whose config, metadata or tensor names declare a huge geometry
(depth 10**9, a block index of 10**9, a text encoder with 10**9 layers) is refused from the
header alone -- one BonsaiFormatError naming the file and the key, in well under a second, with
the heap capped at 256 MB. Before the bounds, each of these grew until MemoryError. Issue 9, item 2.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from bounded_worker import run_bounded
from crafted import append_tensor, rewrite_header

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gguf import write_gguf
from bonsai_core.klein import GeometryError, KleinConfig, infer_config_from_bfl_shapes, infer_config_from_diffusers_shapes
from bonsai_core.te_formats import read_te
from bonsai_tools.synth import QWEN3_TINY_CONFIG, random_te, write_hqq, write_mlx

BIG = 10**9
TE_MINI = {**QWEN3_TINY_CONFIG, "num_hidden_layers": 2, "vocab_size": 256}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def _edit_json(path: Path, **changes: object) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def craft_bombs(tiny: dict, root: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (path to open, the key the error must name)."""
    out: dict[str, tuple[Path, str | None]] = {}

    def meta_depth(h: dict) -> None:
        cfg = json.loads(h["__metadata__"]["klein_config"])
        cfg["depth"] = BIG
        h["__metadata__"]["klein_config"] = json.dumps(cfg)

    p = rewrite_header(_copy(tiny[("binary", "canonical")], root / "canonical-depth.safetensors"), meta_depth)
    out["canonical metadata depth 1e9"] = (p, "__metadata__")

    snap = _copy(tiny[("ternary", "unpacked")], root / "unpacked-index")
    (snap / "transformer" / "config.json").unlink()
    name = f"transformer_blocks.{BIG}.attn.norm_q.weight"
    append_tensor(snap / "transformer" / "diffusion_pytorch_model.safetensors", name, "BF16", [128], b"\0" * 256)
    out["unpacked block index 1e9, no config.json"] = (snap, name)

    snap = _copy(tiny[("binary", "mlx")], root / "mlx-index")
    (snap / "transformer-packed-mflux" / "config.json").unlink()
    name = f"single_transformer_blocks.{BIG}.attn.norm_k.weight"
    append_tensor(snap / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors", name, "BF16", [128], b"\0" * 256)
    out["mlx single-block index 1e9, no config.json"] = (snap, name)

    snap = _copy(tiny[("ternary", "gemlite")], root / "gemlite-config")
    _edit_json(snap / "transformer-gemlite-int2" / "config.json", num_layers=BIG)
    out["gemlite config.json num_layers 1e9"] = (snap, None)

    snap = _copy(tiny[("binary", "mlx")], root / "mlx-config")
    _edit_json(snap / "transformer-packed-mflux" / "config.json", num_single_layers=BIG, attention_head_dim=BIG)
    out["mlx config.json 1e9 single blocks"] = (snap, None)

    # a GGUF (BFL names) with one extra block-index-1e9 tensor beside a valid tiny model
    ckpt = open_checkpoint(tiny[("binary", "canonical")])
    name = f"double_blocks.{BIG}.img_attn.norm.query_norm.scale"
    extra = torch.ones(128, dtype=torch.bfloat16)
    ckpt = dataclasses.replace(
        ckpt,
        dense_shapes={**ckpt.dense_shapes, name: (torch.bfloat16, (128,))},
        load_dense=lambda k, real=ckpt.load_dense: extra if k == name else real(k),
    )
    out["gguf block index 1e9"] = (write_gguf(ckpt, root / "bomb.gguf"), name)

    for layout, write in (("hqq", write_hqq), ("mlx", write_mlx)):
        folder = root / f"te-{layout}"
        write(random_te(TE_MINI, layout, seed=3), folder)
        _edit_json(folder / "config.json", num_hidden_layers=BIG)
        out[f"text encoder ({layout}) with 1e9 layers"] = (folder, "num_hidden_layers")
    return out


def _open(path: Path) -> None:
    (read_te if path.name.startswith("te-") else open_checkpoint)(path)


@pytest.fixture(scope="module")
def bombs(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str | None]]:
    return craft_bombs(tiny, tmp_path_factory.mktemp("bombs"))


@pytest.mark.parametrize(
    "case",
    [
        "canonical metadata depth 1e9",
        "unpacked block index 1e9, no config.json",
        "mlx single-block index 1e9, no config.json",
        "gemlite config.json num_layers 1e9",
        "mlx config.json 1e9 single blocks",
        "gguf block index 1e9",
        "text encoder (hqq) with 1e9 layers",
        "text encoder (mlx) with 1e9 layers",
    ],
)
def test_huge_declared_geometry_is_refused_from_the_header(bombs: dict, case: str) -> None:
    path, key = bombs[case]
    t0 = time.perf_counter()
    with pytest.raises(BonsaiFormatError) as ei:
        _open(path)
    assert time.perf_counter() - t0 < 5
    err = ei.value
    assert Path(err.path).resolve().is_relative_to(path.resolve()), str(err)
    if key is not None:
        assert err.tensor == key, str(err)
    assert str(BIG) in str(err) or "outside" in str(err), str(err)


def open_all_expecting_errors(*paths: str) -> None:
    """Worker side: every bomb must end in BonsaiFormatError (a MemoryError fails the run)."""
    for p in paths:
        try:
            _open(Path(p))
        except BonsaiFormatError:
            continue
        raise AssertionError(f"{p} opened")


def test_every_bomb_within_a_256_mb_heap(bombs: dict) -> None:
    proc = run_bounded("test_attack_geometry:open_all_expecting_errors", *(str(p) for p, _ in bombs.values()), mem_mb=256)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "field",
    ["hidden_size", "num_heads", "depth", "depth_single", "in_channels", "context_in_dim", "time_dim"],
)
def test_klein_config_bounds_every_field(field: str) -> None:
    for bad in (BIG, -1, True, 3.0, "3072"):
        with pytest.raises(GeometryError):
            KleinConfig(**{field: bad})


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), 0.0, -3.0, 1e6])
def test_klein_config_refuses_bad_mlp_ratio(ratio: float) -> None:
    with pytest.raises(GeometryError, match="mlp_ratio"):
        KleinConfig(mlp_ratio=ratio)


@pytest.mark.parametrize(
    ("infer", "key"),
    [
        (infer_config_from_bfl_shapes, f"double_blocks.{BIG}.img_attn.qkv.weight"),
        (infer_config_from_bfl_shapes, "single_blocks.x1.linear1.weight"),
        (infer_config_from_diffusers_shapes, f"transformer_blocks.{'9' * 5000}.ff.linear_in.weight"),
    ],
)
def test_block_index_from_a_name_is_bounded(infer, key: str) -> None:  # noqa: ANN001
    from bonsai_core.klein import KLEIN_TINY, bfl_expected_shapes, diffusers_dense_tensors

    if infer is infer_config_from_bfl_shapes:
        q, d = bfl_expected_shapes(KLEIN_TINY)
        shapes = {**q, **d}
    else:
        shapes = dict(diffusers_dense_tensors(KLEIN_TINY))
        shapes["transformer_blocks.0.ff.linear_out.weight"] = (256, 768)
    shapes[key] = (1,)
    with pytest.raises(GeometryError) as ei:
        infer(shapes)
    assert ei.value.tensor == key
