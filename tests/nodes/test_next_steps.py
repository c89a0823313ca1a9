"""Every loader message says what to do next, from what is installed.

A models tree as users leave it: a complete release; a download interrupted mid-file (huggingface_hub's
``*.incomplete`` in the folder's ``.cache``); a release whose text encoder was cut short; one in Hugging
Face's cache layout (``models--<owner>--<repo>/snapshots/<commit>/``); one copied into
``models/diffusion_models/``. Checked at queue time (the one line under the node) and at run time (the
exception type ComfyUI prints, whatever the pack's folder is called).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bonsai_tools.synth import make_snapshot_fixture
from bonsai_tools.synth.release import make_release

pytestmark = pytest.mark.comfyui

GOOD = "bonsai-image-ternary-4B-gemlite-2bit"
CUT = "cut/bonsai-image-ternary-4B-gemlite-2bit"  # the HQQ text encoder lost its last half
CUT_MLX = "bonsai-image-binary-4B-mlx-1bit"  # the MLX text encoder lost its last half
PARTIAL = "bonsai-image-binary-4B-gemlite-1bit"  # the download stopped inside the transformer
HUB = "models--prism-ml--bonsai-image-ternary-4B-mlx-2bit/snapshots/0123456789abcdef0123456789abcdef01234567"
MISPLACED = "bonsai-image-ternary-4B-unpacked"
REST = {"BonsaiModelLoader": {"backend": "auto", "compute_dtype": "default"}, "BonsaiPipelineLoader": {"backend": "auto", "compute_dtype": "default"}}
INPUT = {"BonsaiModelLoader": "model_name", "BonsaiTextEncoderLoader": "text_encoder", "BonsaiVAELoader": "vae_folder", "BonsaiPipelineLoader": "snapshot"}


def _cut_in_half(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.fixture(scope="module")
def tree(comfyui: Any, module_models: Path) -> Path:
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    bonsai = module_models / "bonsai"
    make_snapshot_fixture("ternary", "gemlite", bonsai, seed=5, tokenizer_src=tok)
    make_release("ternary", "gemlite", bonsai / CUT, seed=6, tokenizer_src=tok)
    _cut_in_half(bonsai / CUT / "text_encoder-hqq-4bit" / "qmodel.pt")
    make_release("binary", "mlx", bonsai / CUT_MLX, seed=7, tokenizer_src=tok)
    _cut_in_half(bonsai / CUT_MLX / "text_encoder-mlx-4bit" / "model.safetensors")
    partial = make_release("binary", "gemlite", bonsai / PARTIAL, seed=8, tokenizer_src=tok)
    shutil.rmtree(partial / "transformer-gemlite-int1")
    cache = partial / ".cache" / "huggingface" / "download" / "transformer-gemlite-int1"
    cache.mkdir(parents=True)
    (cache / "Xk2dG1.9f3c0e.incomplete").write_bytes(b"\0" * 1024)
    make_release("ternary", "mlx", bonsai / HUB, seed=9, tokenizer_src=tok)
    misplaced = module_models / "diffusion_models" / MISPLACED / "transformer"
    misplaced.mkdir(parents=True)
    return module_models


def options(comfyui: Any, node_id: str) -> list[str]:
    return comfyui.node_class(node_id).GET_NODE_INFO_V1()["input"]["required"][INPUT[node_id]][1]["options"]


def queue_error(comfyui: Any, node_id: str, name: str) -> str:
    """The one line ComfyUI shows under the loader when the prompt is queued (empty when it validates)."""
    prompt = {
        "1": {"class_type": node_id, "inputs": {INPUT[node_id]: name, **REST.get(node_id, {})}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    result = comfyui.run(prompt)
    if result.valid:
        return ""
    details = [e["details"] for e in result.node_errors.get("1", {}).get("errors", [])]
    assert len(details) == 1 and "\n" not in details[0], result.node_errors
    return details[0]


def test_hub_cache_layout_is_listed_by_every_loader(comfyui: Any, tree: Path) -> None:
    assert f"{HUB}/" in options(comfyui, "BonsaiModelLoader")
    assert f"{HUB}/" in options(comfyui, "BonsaiPipelineLoader")
    assert f"{HUB}/vae" in options(comfyui, "BonsaiVAELoader")
    assert f"bonsai/{HUB}/text_encoder-mlx-4bit" in options(comfyui, "BonsaiTextEncoderLoader")
    assert queue_error(comfyui, "BonsaiPipelineLoader", f"{HUB}/") == ""


def test_truncated_text_encoder_is_refused_at_queue_time(comfyui: Any, tree: Path) -> None:
    te_options = options(comfyui, "BonsaiTextEncoderLoader")
    assert f"bonsai/{CUT}/text_encoder-hqq-4bit" not in te_options and f"bonsai/{CUT_MLX}/text_encoder-mlx-4bit" not in te_options
    for label in (f"bonsai/{CUT}/text_encoder-hqq-4bit", f"bonsai/{CUT_MLX}/text_encoder-mlx-4bit"):
        line = queue_error(comfyui, "BonsaiTextEncoderLoader", label)
        assert "truncated" in line and "run the same download again" in line, line
    line = queue_error(comfyui, "BonsaiTextEncoderLoader", f"bonsai/{CUT_MLX}/text_encoder-mlx-4bit")
    assert "bonsai.py download binary --release mlx" in line, line
    line = queue_error(comfyui, "BonsaiPipelineLoader", f"{CUT}/")  # the pipeline checks every part, the text encoder too
    assert "qmodel.pt" in line and "truncated" in line and "run the same download again" in line, line


def test_run_time_error_type_is_plain_whatever_the_pack_folder(comfyui: Any, tree: Path) -> None:
    # ComfyUI loaded the pack under a module name made from its folder path; the type must still read plainly.
    assert os.sep in comfyui.pack("bonsai_core").__name__ or "_x_" in comfyui.pack("bonsai_core").__name__
    prompt = {  # a name through a link is not validated at queue time: the loader itself fails at run time
        "10": {"class_type": "PrimitiveString", "inputs": {"value": f"bonsai/{CUT}/text_encoder-hqq-4bit"}},
        "11": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["10", 0], "on_false": ["10", 0]}},
        "1": {"class_type": "BonsaiTextEncoderLoader", "inputs": {"text_encoder": ["11", 0]}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    result = comfyui.run(prompt)
    assert result.valid and not result.success
    err = result.error
    assert err is not None and err["exception_type"] == "BonsaiFormatError", err
    assert "qmodel.pt" in err["exception_message"], err


def test_interrupted_download_says_resume(comfyui: Any, tree: Path) -> None:
    line = queue_error(comfyui, "BonsaiModelLoader", f"{PARTIAL}/")
    assert "was interrupted" in line and "run the same download again to resume" in line, line
    assert "bonsai.py download binary" in line and "transformer-gemlite-int1" in line, line
    line = queue_error(comfyui, "BonsaiPipelineLoader", f"{PARTIAL}/")
    assert "run the same download again to resume" in line, line
    # the parts that did arrive are not offered: the release is not ready
    assert f"{PARTIAL}/vae" not in options(comfyui, "BonsaiVAELoader")
    assert f"bonsai/{PARTIAL}/text_encoder-hqq-4bit" not in options(comfyui, "BonsaiTextEncoderLoader")
    assert f"{PARTIAL}/" not in options(comfyui, "BonsaiPipelineLoader")
    assert f"{GOOD}/vae" in options(comfyui, "BonsaiVAELoader")


def test_missing_name_points_to_installed_entries_and_misplaced_releases(comfyui: Any, tree: Path) -> None:
    line = queue_error(comfyui, "BonsaiVAELoader", "bonsai-image-binary-4B-unpacked/vae")
    assert "pick one of these installed entries" in line and f"'{GOOD}/vae'" in line, line
    assert f"models/diffusion_models/{MISPLACED}" in line and "move the folder to models/bonsai/" in line, line
    assert "x_embedder.bias" in line, line
    line = queue_error(comfyui, "BonsaiModelLoader", "bonsai-image-ternary-4B.safetensors")
    assert "--to-canonical" in line and f"pick '{GOOD}/'" in line, line


def test_one_name_rule_for_snapshot_names(comfyui: Any, tree: Path) -> None:
    for node_id in ("BonsaiModelLoader", "BonsaiPipelineLoader"):
        for name in (f"{GOOD}/", GOOD):
            assert queue_error(comfyui, node_id, name) == "", (node_id, name)
    for name in (f"{GOOD}/vae", f"{GOOD}/vae/", f"{GOOD}/", GOOD):
        assert queue_error(comfyui, "BonsaiVAELoader", name) == "", name
    for name in (f"bonsai/{GOOD}/text_encoder-hqq-4bit", f"bonsai/{GOOD}/text_encoder-hqq-4bit/"):
        assert queue_error(comfyui, "BonsaiTextEncoderLoader", name) == "", name
    # a snapshot root where a text encoder folder is wanted: which subfolder to pick
    line = queue_error(comfyui, "BonsaiTextEncoderLoader", f"bonsai/{GOOD}/")
    assert f"pick its text encoder 'bonsai/{GOOD}/text_encoder-hqq-4bit'" in line, line


def test_pipeline_given_a_canonical_file_points_to_load_model(comfyui: Any, tree: Path) -> None:
    convert = comfyui.pack("bonsai_core.convert")
    convert.convert(tree / "bonsai" / GOOD, tree / "bonsai" / "bonsai-image-ternary-4B.safetensors", "canonical", "ternary")
    try:
        line = queue_error(comfyui, "BonsaiPipelineLoader", "bonsai-image-ternary-4B.safetensors")
        assert "canonical transformer file" in line and "Bonsai Load Model" in line, line
        assert queue_error(comfyui, "BonsaiModelLoader", "bonsai-image-ternary-4B.safetensors") == ""
    finally:
        (tree / "bonsai" / "bonsai-image-ternary-4B.safetensors").unlink()


def test_download_node_tooltips_name_each_releases_bits(comfyui: Any) -> None:
    inputs = comfyui.node_class("BonsaiDownloadModel").GET_NODE_INFO_V1()["input"]["required"]
    assert inputs["variant"][1]["tooltip"] == "ternary = 2-bit, binary = 1-bit"
    release, te = inputs["release"][1]["tooltip"], inputs["text_encoder"][1]["tooltip"]
    assert "unpacked: bf16" in release and "bf16 in unpacked" in te, (release, te)
    assert not te.startswith("also download the 4-bit"), te  # the unpacked release's text encoder is bf16
