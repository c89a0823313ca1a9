"""What users see of the pack in ComfyUI: one category, the display names the README lists, and a load
log line that names the matmul backend actually chosen."""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytestmark = pytest.mark.comfyui

# node id -> display name; the README's node table is written from this list.
DISPLAY_NAMES = {
    "BonsaiPipelineLoader": "Bonsai Load Pipeline",
    "BonsaiModelLoader": "Bonsai Load Model",
    "BonsaiTextEncoderLoader": "Bonsai Load Text Encoder",
    "BonsaiVAELoader": "Bonsai Load VAE",
    "BonsaiSampler": "Bonsai Sampler",
    "BonsaiDownloadModel": "Bonsai Download Model",
}
CATEGORY = "Bonsai Image"


def test_one_category_and_the_documented_display_names(comfyui: Any) -> None:
    infos = {node_id: comfyui.node_class(node_id).GET_NODE_INFO_V1() for node_id in comfyui.pack_nodes}
    assert set(infos) == set(DISPLAY_NAMES), sorted(infos)
    assert {node_id: info["category"] for node_id, info in infos.items()} == dict.fromkeys(DISPLAY_NAMES, CATEGORY)
    assert {node_id: info["display_name"] for node_id, info in infos.items()} == DISPLAY_NAMES


def test_backend_input_means_the_matmul_kernel_on_loaders_only(comfyui: Any) -> None:
    for node_id in comfyui.pack_nodes:
        inputs = comfyui.node_class(node_id).GET_NODE_INFO_V1()["input"]
        names = set(inputs.get("required", {})) | set(inputs.get("optional", {}))
        assert ("backend" in names) == (node_id in ("BonsaiModelLoader", "BonsaiPipelineLoader")), (node_id, names)


def test_load_log_names_the_chosen_backend(comfyui: Any, caplog: pytest.LogCaptureFixture) -> None:
    loader = comfyui.pack("nodes.model_loader")
    name, _ = comfyui.tiny_model("binary")
    path = comfyui.models_dir / "diffusion_models" / name
    cases = (("auto", "backend torch, chosen by auto on cpu"), ("auto-fp8", "backend torch, chosen by auto-fp8 on cpu"), ("torch", "backend torch"))
    for requested, expected in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bonsai_image.loader"):
            loader.load_bonsai_model(path, requested)
        (line,) = [r.getMessage() for r in caplog.records if "model loaded from" in r.getMessage()]
        assert line.endswith(expected), line
        assert "backend auto" not in line


def test_loader_backend_options_offer_exact_and_fastest_auto(comfyui: Any) -> None:
    """``auto`` (bit-exact) and ``auto-fp8`` (fastest, FP8 where the GPU has it) come first, then every
    registered kernel by name."""
    for node_id in ("BonsaiModelLoader", "BonsaiPipelineLoader"):
        spec = comfyui.node_class(node_id).GET_NODE_INFO_V1()["input"]["required"]["backend"]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
        assert options[:2] == ["auto", "auto-fp8"], (node_id, options)
        assert {"torch", "triton_dequant", "fp8_rowwise"} <= set(options), (node_id, options)
