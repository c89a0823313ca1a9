"""Every Bonsai loader's dropdown lists only what that loader loads, and a missing model says how to get it.

The tree is what real users have: three release snapshots as the downloader lays them out (gemlite,
MLX, unpacked: each with its own ``vae/`` and text encoder, the unpacked one with a diffusers
``transformer/`` that also holds a ``config.json`` + ``diffusion_pytorch_model.safetensors``), a
canonical file where ``--to-canonical`` writes it (``models/bonsai/``), and files no loader can use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bonsai_tools.synth import make_fixture, make_snapshot_fixture

pytestmark = pytest.mark.comfyui

LAYOUTS = (("ternary", "gemlite"), ("binary", "mlx"), ("ternary", "unpacked"))
CANONICAL = "converted/bonsai-binary-canonical.safetensors"
LOADERS = {  # node id -> the input naming what it loads
    "BonsaiModelLoader": "model_name",
    "BonsaiTextEncoderLoader": "text_encoder",
    "BonsaiVAELoader": "vae_folder",
    "BonsaiPipelineLoader": "snapshot",
}


@pytest.fixture(scope="module")
def tree(comfyui: Any, module_models: Path) -> dict[str, Path]:
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    bonsai = module_models / "bonsai"
    out = {layout: make_snapshot_fixture(variant, layout, bonsai, seed=2, tokenizer_src=tok) for variant, layout in LAYOUTS}
    (bonsai / "converted").mkdir()
    make_fixture("binary", "tiny", "canonical", 0, bonsai / CANONICAL)
    # Not loadable by any Bonsai loader: a dense safetensors, a random file, a folder of notes.
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4, 4)}, str(bonsai / "converted" / "dense-model.safetensors"))
    (bonsai / "converted" / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (bonsai / "notes").mkdir()
    (bonsai / "notes" / "config.json").write_text(json.dumps({"hello": "world"}))
    return out


def options(comfyui: Any, node_id: str) -> list[str]:
    """The dropdown as ComfyUI serves it to the frontend (``/object_info``)."""
    info = comfyui.node_class(node_id).GET_NODE_INFO_V1()
    return info["input"]["required"][LOADERS[node_id]][1]["options"]


def test_model_dropdown(comfyui: Any, tree: dict[str, Path]) -> None:
    got = options(comfyui, "BonsaiModelLoader")
    for snap in tree.values():
        assert f"{snap.name}/" in got
    assert CANONICAL in got  # canonical files belong in models/bonsai, where the stock loader does not list them
    assert not [o for o in got if o.startswith(("converted/dense", "converted/garbage", "notes"))], got
    assert not [o for o in got if "/transformer" in o or o.endswith(("/vae/", "/text_encoder/"))], got


def test_text_encoder_dropdown_holds_text_encoders_only(comfyui: Any, tree: dict[str, Path]) -> None:
    got = options(comfyui, "BonsaiTextEncoderLoader")
    assert {
        f"bonsai/{tree['gemlite'].name}/text_encoder-hqq-4bit",
        f"bonsai/{tree['mlx'].name}/text_encoder-mlx-4bit",
        f"bonsai/{tree['unpacked'].name}/text_encoder",
    } <= set(got)
    # a release's vae/ and transformer folders hold a config.json and safetensors too: never a text encoder
    wrong = [o for o in got if o.rstrip("/").rsplit("/", 1)[-1] in ("vae", "transformer", "transformer-packed-mflux", "tokenizer", "notes")]
    assert not wrong and not [o for o in got if "transformer-gemlite" in o], got


def test_vae_dropdown_holds_flux2_vaes_only(comfyui: Any, tree: dict[str, Path]) -> None:
    got = options(comfyui, "BonsaiVAELoader")
    assert {f"{snap.name}/vae" for snap in tree.values()} <= set(got)
    assert f"{tree['unpacked'].name}/transformer" not in got  # same two file names as a VAE folder, a diffusers transformer config
    assert all(o.endswith("vae") for o in got if o.startswith("bonsai-image-")), got


def test_pipeline_dropdown_holds_complete_snapshots(comfyui: Any, tree: dict[str, Path], module_models: Path) -> None:
    assert {f"{snap.name}/" for snap in tree.values()} <= set(options(comfyui, "BonsaiPipelineLoader"))
    partial = module_models / "bonsai" / "partial-release"
    shutil.copytree(tree["gemlite"], partial, ignore=shutil.ignore_patterns("text_encoder-hqq-4bit"))
    try:
        assert "partial-release/" not in options(comfyui, "BonsaiPipelineLoader")
        assert "partial-release/" in options(comfyui, "BonsaiModelLoader")  # its transformer still loads alone
        problem = comfyui.node_class("BonsaiPipelineLoader").validate_inputs("partial-release/")
        assert "no text encoder folder" in problem and "Bonsai Download Model" in problem and "\n" not in problem, problem
        shutil.rmtree(partial / "vae")  # a transformer-only download: one line, not "[Errno 2] ... vae/config.json"
        problem = comfyui.node_class("BonsaiPipelineLoader").validate_inputs("partial-release/")
        assert "no FLUX.2 VAE" in problem and "bonsai.py download" in problem and "Errno" not in problem, problem
    finally:
        shutil.rmtree(partial)


@pytest.mark.parametrize("node_id", sorted(LOADERS))
def test_every_listed_entry_passes_validation(comfyui: Any, tree: dict[str, Path], node_id: str) -> None:
    """What a dropdown offers, the node accepts at queue time (the whole session's models folders, not just this tree)."""
    node = comfyui.node_class(node_id)
    got = options(comfyui, node_id)
    assert got
    refused = {o: r for o in got if (r := node.validate_inputs(**{LOADERS[node_id]: o})) is not True}
    assert not refused, refused


def test_listed_text_encoders_and_vaes_load(comfyui: Any, tree: dict[str, Path]) -> None:
    import comfy.sd

    te_node, vae_node = comfyui.node_class("BonsaiTextEncoderLoader"), comfyui.node_class("BonsaiVAELoader")
    for label in options(comfyui, "BonsaiTextEncoderLoader"):
        if any(snap.name in label for snap in tree.values()):
            (clip,) = te_node.execute(label).result
            assert type(clip) is comfy.sd.CLIP, label
    for name in options(comfyui, "BonsaiVAELoader"):
        if name.split("/")[0] in {snap.name for snap in tree.values()}:
            (vae,) = vae_node.execute(name).result
            assert type(vae) is comfy.sd.VAE and vae.latent_channels == 128, name


def test_canonical_file_in_models_bonsai_loads(comfyui: Any, tree: dict[str, Path]) -> None:
    import comfy.model_patcher

    (model,) = comfyui.node_class("BonsaiModelLoader").execute(CANONICAL, "auto", "default").result
    assert isinstance(model, comfy.model_patcher.ModelPatcher)


MISSING = {
    "BonsaiModelLoader": ("bonsai-image-ternary-4B-gemlite-2bit-not-downloaded/", {"backend": "auto", "compute_dtype": "default"}),
    "BonsaiTextEncoderLoader": ("bonsai/bonsai-image-ternary-4B-gemlite-2bit-not-downloaded/text_encoder-hqq-4bit", {}),
    "BonsaiVAELoader": ("bonsai-image-ternary-4B-gemlite-2bit-not-downloaded/vae", {}),
    "BonsaiPipelineLoader": ("bonsai-image-ternary-4B-gemlite-2bit-not-downloaded/", {"backend": "auto", "compute_dtype": "default"}),
}


@pytest.mark.parametrize("node_id", sorted(MISSING))
def test_missing_model_is_one_line_saying_how_to_get_it(comfyui: Any, node_id: str) -> None:
    name, rest = MISSING[node_id]
    prompt = {
        "1": {"class_type": node_id, "inputs": {LOADERS[node_id]: name, **rest}},
        "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "out"}},
    }
    result = comfyui.run(prompt)
    assert not result.valid
    (error,) = result.node_errors["1"]["errors"]
    details = error["details"]
    assert "\n" not in details and "Traceback" not in details
    assert f"{name!r} not found" in details, details
    assert '"Bonsai Download Model" node' in details and "bonsai.py download" in details, details
    assert "not in [" not in details  # not ComfyUI's stock "value not in list"
