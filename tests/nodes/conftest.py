"""Fixtures for the node tests: the pack's modules as ComfyUI loaded them, tiny text encoders in a models tree."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from harness.comfyui import ComfyUISession

SNAP_HQQ = "bonsai-image-ternary-4B-gemlite-2bit"
SNAP_MLX = "bonsai-image-binary-4B-mlx-1bit"


@pytest.fixture(scope="session")
def te_node(comfyui: ComfyUISession) -> ModuleType:
    return comfyui.pack("nodes.text_encoder")


@pytest.fixture(scope="session")
def te_pack(comfyui: ComfyUISession) -> ModuleType:
    """The pack's ``bonsai_core`` as ComfyUI imported it (its error classes are the ones raised)."""
    return comfyui.pack("bonsai_core")


@pytest.fixture(scope="module")
def tiny_tes(comfyui: ComfyUISession, module_models: Path) -> dict[str, Path]:
    """Released-layout tiny TEs: HQQ in a gemlite snapshot, HQQ with Qwen3Model keys in
    models/text_encoders, MLX in an MLX snapshot (tokenizer files inside, as released).

    In the module's own models root: these snapshots hold only a text encoder, and under the release
    names in the shared root they would hide complete snapshot fixtures of other modules."""
    fixture = comfyui.pack("bonsai_tools.synth")
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    bonsai = module_models / "bonsai"
    out = {
        "hqq": bonsai / SNAP_HQQ / "text_encoder-hqq-4bit",
        "hqq_layers": module_models / "text_encoders" / "bonsai-te-hqq-qwen3model",
        "mlx": bonsai / SNAP_MLX / "text_encoder-mlx-4bit",
    }
    fixture.make_te_fixture("hqq", "tiny", 11, out["hqq"], tokenizer_src=tok)
    fixture.make_te_fixture("hqq", "tiny", 12, out["hqq_layers"], tokenizer_src=tok, hqq_prefix="")
    fixture.make_te_fixture("mlx", "tiny", 13, out["mlx"], tokenizer_src=tok)
    return out


@pytest.fixture(scope="module")
def te_labels(tiny_tes: dict[str, Path]) -> dict[str, str]:
    """The loader's combo labels for :func:`tiny_tes`."""
    return {
        "hqq": f"bonsai/{SNAP_HQQ}/text_encoder-hqq-4bit",
        "hqq_layers": "text_encoders/bonsai-te-hqq-qwen3model",
        "mlx": f"bonsai/{SNAP_MLX}/text_encoder-mlx-4bit",
    }


@pytest.fixture(scope="session")
def lora_mod(comfyui: ComfyUISession) -> ModuleType:
    return comfyui.pack("nodes.lora")


@pytest.fixture(scope="session")
def lowrank(comfyui: ComfyUISession) -> ModuleType:
    return comfyui.pack("bonsai_core.lowrank")


@pytest.fixture(scope="session")
def ops(comfyui: ComfyUISession) -> ModuleType:
    return comfyui.pack("nodes.ops")
