"""Fixtures for the LoRA tests: the shared in-process ComfyUI harness (tests/comfyui_env.py)."""

from __future__ import annotations

from types import ModuleType

import pytest
from lora_env import ComfyUISession, comfy_models, comfyui, import_comfy_early, module_models, shared_models_stay_clean  # noqa: F401  (pytest fixtures)

import_comfy_early()


@pytest.fixture(scope="session")
def lora_mod(comfyui: ComfyUISession) -> ModuleType:  # noqa: F811
    return comfyui.pack("nodes.lora")


@pytest.fixture(scope="session")
def lowrank(comfyui: ComfyUISession) -> ModuleType:  # noqa: F811
    return comfyui.pack("bonsai_core.lowrank")


@pytest.fixture(scope="session")
def ops(comfyui: ComfyUISession) -> ModuleType:  # noqa: F811
    return comfyui.pack("nodes.ops")
