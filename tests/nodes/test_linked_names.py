"""Names that reach a loader through a link are guarded where the path is resolved, at execution.

ComfyUI validates only literal widget values; a name computed by other nodes (here a stock string
primitive through the stock If/Else switch) is first seen by ``execute``. Each loader must refuse a
name that leaves the models folders there, with one plain line, and load nothing -- while a proper
name through the same link still loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bonsai_tools.synth import make_snapshot_fixture

pytestmark = pytest.mark.comfyui

REST = {
    "BonsaiModelLoader": {"backend": "auto", "compute_dtype": "default"},
    "BonsaiPipelineLoader": {"backend": "auto", "compute_dtype": "default"},
}
INPUT = {
    "BonsaiModelLoader": "model_name",
    "BonsaiTextEncoderLoader": "text_encoder",
    "BonsaiVAELoader": "vae_folder",
    "BonsaiPipelineLoader": "snapshot",
}


def linked(node_id: str, name: str) -> dict[str, Any]:
    """``PrimitiveString(name) -> ComfySwitchNode -> <loader>.<input>``, output captured."""
    return {
        "10": {"class_type": "PrimitiveString", "inputs": {"value": name}},
        "11": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["10", 0], "on_false": ["10", 0]}},
        "1": {"class_type": node_id, "inputs": {INPUT[node_id]: ["11", 0], **REST.get(node_id, {})}},
        "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "out"}},
    }


@pytest.fixture(scope="module")
def outside(comfyui: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, loadable release outside every models folder (what an escaping name would reach)."""
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    return make_snapshot_fixture("ternary", "gemlite", tmp_path_factory.mktemp("outside"), seed=4, tokenizer_src=tok)


@pytest.fixture(scope="module")
def inside(comfyui: Any, module_models: Path) -> Path:
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    return make_snapshot_fixture("ternary", "gemlite", module_models / "bonsai", seed=4, tokenizer_src=tok)


def escaping_names(node_id: str, outside: Path, models_dir: Path) -> list[str]:
    up = "/".join([".."] * len((models_dir / "bonsai").parts)) + str(outside)  # relative, climbing to /
    if node_id == "BonsaiTextEncoderLoader":
        te = outside / "text_encoder-hqq-4bit"
        return [str(te), f"bonsai/{up}/text_encoder-hqq-4bit", f"text_encoders/../../{te.name}"]
    if node_id == "BonsaiVAELoader":
        return [str(outside / "vae"), f"{up}/vae"]
    return [f"{outside}/", f"{up}/"]


@pytest.mark.parametrize("node_id", sorted(INPUT))
def test_linked_name_outside_the_models_folders_is_refused_at_execution(
    comfyui: Any, outside: Path, inside: Path, module_models: Path, node_id: str
) -> None:
    for name in escaping_names(node_id, outside, module_models):
        result = comfyui.run(linked(node_id, name))
        assert result.valid, (name, result.node_errors)  # nothing literal to check at queue time
        assert not result.success and "out" not in result.captured, name  # nothing was loaded
        err = result.error
        assert err is not None and err["node_id"] == "1", (name, result.messages)
        assert err["exception_type"] == "ValueError", err["exception_type"]  # a plain type name, not the pack's module path
        message = err["exception_message"].strip()
        assert "\n" not in message and "absolute paths and '..' are refused" in message, message


def _proper_name(node_id: str, inside: Path) -> str:
    return {
        "BonsaiModelLoader": f"{inside.name}/",
        "BonsaiPipelineLoader": f"{inside.name}/",
        "BonsaiTextEncoderLoader": f"bonsai/{inside.name}/text_encoder-hqq-4bit",
        "BonsaiVAELoader": f"{inside.name}/vae",
    }[node_id]


@pytest.mark.parametrize("node_id", ["BonsaiTextEncoderLoader", "BonsaiVAELoader", "BonsaiModelLoader"])
def test_linked_proper_name_loads(comfyui: Any, inside: Path, node_id: str) -> None:
    result = comfyui.run(linked(node_id, _proper_name(node_id, inside)))
    assert result.success, result.error
    assert result.captured["out"] is not None


def test_linked_missing_name_is_one_line(comfyui: Any, inside: Path) -> None:
    result = comfyui.run(linked("BonsaiVAELoader", "not-downloaded-yet/vae"))
    assert result.valid and not result.success
    err = result.error
    assert err["exception_type"] == "FileNotFoundError"
    message = err["exception_message"].strip()
    assert "\n" not in message and "'not-downloaded-yet/vae' not found" in message and "Bonsai Download Model" in message
