"""The diffusers FLUX.2 VAE loader, the snapshot fixture tree and the one-node pipeline loader in a real ComfyUI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bonsai_core.vae import RELEASED_VAE_CONFIG, VAE_BLOCK_OUT, VAE_WEIGHTS_NAME, vae_tensor_shapes
from bonsai_tools.synth import make_snapshot_fixture, make_vae_fixture, snapshot_repo_name

pytestmark = pytest.mark.comfyui


# ---------------------------------------------------------------------------
# fixture layout (no ComfyUI needed, but kept with the loader tests it serves)
# ---------------------------------------------------------------------------


def test_full_vae_layout_matches_the_release() -> None:
    """The released vae/: 251 tensors (250 bf16 + int64 bn.num_batches_tracked), 84,046,115 parameters
    (the two BatchNorm running-stat buffers excluded), 168,120,878 bytes on disk."""
    shapes = vae_tensor_shapes(VAE_BLOCK_OUT)
    assert len(shapes) == 251
    buffers = {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert sum(math.prod(s) for k, s in shapes.items() if k not in buffers) == 84_046_115
    data_bytes = sum(2 * math.prod(s) for k, s in shapes.items() if k != "bn.num_batches_tracked") + 8
    header = 168_120_878 - 8 - data_bytes
    assert 20_000 < header < 40_000, "the released file is this layout plus a ~28 kB safetensors header"
    assert shapes["bn.running_mean"] == (128,) and shapes["decoder.conv_in.weight"] == (512, 32, 3, 3)
    assert shapes["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)  # diffusers Linear, not a 1x1 conv


def test_vae_fixture_is_deterministic_and_complete(tmp_path: Path) -> None:
    a = make_vae_fixture("tiny", 3, tmp_path / "a")
    b = make_vae_fixture("tiny", 3, tmp_path / "b")
    assert (a / VAE_WEIGHTS_NAME).read_bytes() == (b / VAE_WEIGHTS_NAME).read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "decoder_block_out_channels"} == RELEASED_VAE_CONFIG
    from safetensors import safe_open

    with safe_open(str(a / VAE_WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("bn.num_batches_tracked").dtype == torch.int64
        assert f.get_tensor("encoder.conv_in.weight").dtype == torch.bfloat16
    assert keys == set(vae_tensor_shapes())  # same 251 names as the release, only the decoder is narrower


def test_snapshot_fixture_is_the_released_tree(tmp_path: Path) -> None:
    snap = make_snapshot_fixture("ternary", "gemlite", tmp_path)
    assert snap.name == snapshot_repo_name("ternary", "gemlite") == "bonsai-image-ternary-4B-gemlite-2bit"
    files = {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
    assert {
        "model_index.json",
        "manifest.json",
        "transformer-gemlite-int2/state_dict.pt",
        "transformer-gemlite-int2/config.json",
        "transformer-gemlite-int2/quantization_config.json",
        "text_encoder-hqq-4bit/config.json",
        "text_encoder-hqq-4bit/qmodel.pt",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    } <= files
    mlx = make_snapshot_fixture("binary", "mlx", tmp_path)
    assert mlx.name == "bonsai-image-binary-4B-mlx-1bit"
    assert (mlx / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors").is_file()
    assert (mlx / "text_encoder-mlx-4bit" / "model.safetensors").is_file()
    assert (mlx / "scheduler" / "scheduler_config.json").is_file()
    unpacked = make_snapshot_fixture("binary", "unpacked", tmp_path)
    assert unpacked.name == "bonsai-image-binary-4B-unpacked"
    assert (unpacked / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((unpacked / "text_encoder" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert not list(tmp_path.glob(".*partial")), "no half-built folder is left behind"


# ---------------------------------------------------------------------------
# BonsaiVAELoader
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_models(comfyui: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A models root searched first while this module runs (and forgotten afterwards), so these fixtures,
    named like real releases, do not show up in other modules' listings."""
    import harness.workflows as we

    with we.models_root(comfyui.folder_paths, tmp_path_factory.mktemp("vae_pipeline_models")) as root:
        yield root


@pytest.fixture(scope="module")
def vae_mod(comfyui: Any) -> Any:
    return comfyui.pack("nodes.vae")


@pytest.fixture(scope="module")
def vae_dir(own_models: Path) -> Path:
    """A snapshot-shaped folder holding only a VAE: models/bonsai/vae-only-test/vae."""
    return make_vae_fixture("tiny", 11, own_models / "bonsai" / "vae-only-test" / "vae")


def test_vae_loader_lists_and_loads_a_stock_vae(comfyui: Any, vae_mod: Any, vae_dir: Path) -> None:
    import comfy.sd

    assert "vae-only-test/vae" in vae_mod.list_vae_folders()
    node = comfyui.node_class("BonsaiVAELoader")
    assert "vae-only-test/vae" in node.INPUT_TYPES()["required"]["vae_folder"][1]["options"]
    (vae,) = node.execute("vae-only-test/vae").result
    assert type(vae) is comfy.sd.VAE
    assert vae.latent_channels == 128 and vae.downscale_ratio == 16
    img = torch.rand(1, 64, 96, 3)
    lat = vae.encode(img)
    assert lat.shape == (1, 128, 4, 6)
    out = vae.decode(lat)
    assert out.shape == (1, 64, 96, 3) and torch.isfinite(out).all()


def test_vae_loader_equals_stock_vaeloader(comfyui: Any, vae_mod: Any, vae_dir: Path, own_models: Path) -> None:
    """The documented stock route (the file in models/vae + stock Load VAE) gives the same VAE."""
    shutil.copyfile(vae_dir / VAE_WEIGHTS_NAME, own_models / "vae" / "bonsai-flux2-vae-test.safetensors")
    (stock,) = comfyui.nodes.NODE_CLASS_MAPPINGS["VAELoader"]().load_vae("bonsai-flux2-vae-test.safetensors")
    ours = vae_mod.load_flux2_vae(vae_dir)
    lat = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours.decode(lat), stock.decode(lat))
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.encode(img), stock.encode(img))


def _copy_vae(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_vae_loader_errors_name_file_and_tensor(vae_mod: Any, vae_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    err = vae_mod.BonsaiFormatError

    d = _copy_vae(vae_dir, tmp_path / "cls")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKL"}))
    with pytest.raises(err, match=r"config\.json.*AutoencoderKLFlux2"):
        vae_mod.load_flux2_vae(d)

    d = _copy_vae(vae_dir, tmp_path / "trunc")
    w = d / VAE_WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(err, match=r"diffusion_pytorch_model\.safetensors.*truncated"):
        vae_mod.load_flux2_vae(d)

    sd = load_file(str(vae_dir / VAE_WEIGHTS_NAME))
    d = _copy_vae(vae_dir, tmp_path / "missing")
    save_file({k: v for k, v in sd.items() if k != "decoder.mid_block.attentions.0.to_k.weight"}, str(d / VAE_WEIGHTS_NAME))
    with pytest.raises(err, match=r"tensor 'decoder\.mid_block\.attentions\.0\.to_k\.weight'.*missing"):
        vae_mod.load_flux2_vae(d)

    d = _copy_vae(vae_dir, tmp_path / "shape")
    save_file({**sd, "encoder.conv_out.weight": torch.zeros(32, 512, 3, 3, dtype=torch.bfloat16)}, str(d / VAE_WEIGHTS_NAME))
    with pytest.raises(err, match=r"tensor 'encoder\.conv_out\.weight'.*shape \[32, 512, 3, 3\], expected \[64, 512, 3, 3\]"):
        vae_mod.load_flux2_vae(d)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="absolute paths and '..' are refused"):
        vae_mod.resolve_vae_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="VAE folder 'no-such-release/vae' not found.*Bonsai Download Model"):
        vae_mod.resolve_vae_folder("no-such-release/vae")


# ---------------------------------------------------------------------------
# BonsaiPipelineLoader
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshots(comfyui: Any, own_models: Path) -> dict[str, Path]:
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    out = {}
    for variant, layout in (("ternary", "gemlite"), ("binary", "mlx"), ("ternary", "unpacked")):
        name = snapshot_repo_name(variant, layout)
        target = own_models / "bonsai" / name
        out[name] = target if target.is_dir() else make_snapshot_fixture(variant, layout, own_models / "bonsai", seed=1, tokenizer_src=tok)
    return out


@pytest.mark.parametrize(
    "name", ["bonsai-image-ternary-4B-gemlite-2bit", "bonsai-image-binary-4B-mlx-1bit", "bonsai-image-ternary-4B-unpacked"]
)
def test_pipeline_loader_gives_model_clip_vae(comfyui: Any, snapshots: dict[str, Path], name: str) -> None:
    import comfy.model_patcher
    import comfy.sd

    node = comfyui.node_class("BonsaiPipelineLoader")
    assert f"{name}/" in node.INPUT_TYPES()["required"]["snapshot"][1]["options"]
    model, clip, vae = node.execute(f"{name}/", "auto", "default").result
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert type(clip) is comfy.sd.CLIP and type(vae) is comfy.sd.VAE
    assert model.model.latent_format.latent_channels == 128
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a bonsai"))
    assert cond[0][0].shape[-1] == 384  # 3 x the tiny TE's hidden size = the tiny DiT's context_in_dim
    assert vae.latent_channels == 128


def test_pipeline_loader_refuses_incomplete_snapshots(comfyui: Any, snapshots: dict[str, Path], own_models: Path) -> None:
    pipeline = comfyui.pack("nodes.pipeline")
    src = snapshots["bonsai-image-ternary-4B-gemlite-2bit"]
    broken = own_models / "bonsai" / "broken-no-vae"
    shutil.copytree(src, broken, ignore=shutil.ignore_patterns("vae"))
    try:
        assert "broken-no-vae/" not in pipeline.list_snapshots()
        with pytest.raises(pipeline.BonsaiFormatError, match=r"broken-no-vae/vae.*no FLUX\.2 VAE"):
            pipeline.load_pipeline(broken)
        shutil.copytree(src / "vae", broken / "vae")
        shutil.rmtree(broken / "text_encoder-hqq-4bit")
        with pytest.raises(pipeline.BonsaiFormatError, match="no text encoder folder"):
            pipeline.load_pipeline(broken)
    finally:
        shutil.rmtree(broken)


@pytest.mark.slow
def test_full_size_vae_fixture_loads_as_the_released_geometry(comfyui: Any, vae_mod: Any, tmp_path: Path) -> None:
    """The full-size fixture (the released geometry, 168 MB) through the loader: same file layout as the
    release up to the safetensors header, and ComfyUI builds the standard 128-channel decoder from it."""
    d = make_vae_fixture("full", 0, tmp_path / "vae")
    size = (d / VAE_WEIGHTS_NAME).stat().st_size
    assert abs(size - 168_120_878) < 1024, f"{size} bytes vs 168,120,878 released"
    vae = vae_mod.load_flux2_vae(d)
    assert vae.first_stage_model.decoder.conv_in.weight.shape == (512, 32, 3, 3)
    out = vae.decode(torch.randn(1, 128, 2, 2, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 32, 32, 3) and torch.isfinite(out).all()


def test_pipeline_prompt_validation_names_a_broken_vae(comfyui: Any, snapshots: dict[str, Path], own_models: Path) -> None:
    """A truncated vae/ fails when the prompt is queued (node error naming the file), before anything loads."""
    src = snapshots["bonsai-image-ternary-4B-gemlite-2bit"]
    broken = own_models / "bonsai" / "broken-vae-snapshot"
    shutil.copytree(src, broken)
    try:
        w = broken / "vae" / VAE_WEIGHTS_NAME
        w.write_bytes(w.read_bytes()[:100_000])
        prompt = {
            "1": {
                "class_type": "BonsaiPipelineLoader",
                "inputs": {"snapshot": "broken-vae-snapshot/", "backend": "auto", "compute_dtype": "default"},
            },
            "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 2], "label": "vae"}},
        }
        result = comfyui.run(prompt)
        assert not result.valid
        assert "broken-vae-snapshot/vae/diffusion_pytorch_model.safetensors" in json.dumps(result.node_errors)
        bad = dict(prompt, **{"1": {**prompt["1"], "inputs": {**prompt["1"]["inputs"], "snapshot": "../bonsai/broken-vae-snapshot/"}}})
        assert "not a snapshot folder name" in json.dumps(comfyui.run(bad).node_errors)
    finally:
        shutil.rmtree(broken)


def test_vae_node_validation_at_queue_time(comfyui: Any, vae_dir: Path, own_models: Path) -> None:
    bad = own_models / "bonsai" / "bad-vae-test" / "vae"
    shutil.copytree(vae_dir, bad)
    try:
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, "latent_channels": 16}))

        def prompt(name: str) -> dict[str, Any]:
            return {
                "1": {"class_type": "BonsaiVAELoader", "inputs": {"vae_folder": name}},
                "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "vae"}},
            }

        assert comfyui.run(prompt("vae-only-test/vae")).success
        errors = json.dumps(comfyui.run(prompt("bad-vae-test/vae")).node_errors)
        assert "bad-vae-test/vae/config.json" in errors and "latent_channels" in errors
        assert "not a VAE folder name" in json.dumps(comfyui.run(prompt("../vae/x")).node_errors)
    finally:
        shutil.rmtree(bad.parent)
