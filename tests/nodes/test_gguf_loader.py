"""Bonsai Load Model accepts Bonsai GGUF files: a ``.gguf`` in ``models/bonsai`` (or a folder holding
one, as a community GGUF repository is downloaded) is listed, passes queue-time validation and loads
the same model as the canonical file of the same weights. Before, the messages named ``.gguf`` but no
loader listed or accepted one. Issue 18, item 10."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.comfyui


def test_gguf_files_and_gguf_folders_are_listed_validated_and_load_like_canonical(comfyui: Any, module_models: Path) -> None:
    synth = comfyui.pack("bonsai_tools.synth")
    bonsai = module_models / "bonsai"
    synth.make_fixture("binary", "tiny", "gguf", 0, bonsai / "tiny-binary.gguf")
    synth.make_fixture("binary", "tiny", "gguf", 0, bonsai / "gguf-repo" / "bonsai-binary-q1_0.gguf")
    synth.make_fixture("binary", "tiny", "canonical", 0, bonsai / "tiny-binary.safetensors")
    loader = comfyui.node_class("BonsaiModelLoader")
    options = loader.GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    assert {"tiny-binary.gguf", "gguf-repo/", "tiny-binary.safetensors"} <= set(options), options
    assert loader.validate_inputs(model_name="tiny-binary.gguf") is True
    assert loader.validate_inputs(model_name="gguf-repo/") is True

    load = comfyui.pack("nodes.model_loader").load_bonsai_model
    sources = comfyui.pack("nodes.model_sources")
    want = load(sources.resolve_model("tiny-binary.safetensors")).model.diffusion_model.state_dict()
    for name in ("tiny-binary.gguf", "gguf-repo/"):
        got = load(sources.resolve_model(name)).model.diffusion_model.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
