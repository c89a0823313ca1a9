"""Fixtures for the LoRA tests (see lora_env.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from lora_env import comfyui_available, import_comfyui, import_pack

# Import ComfyUI (with --cpu) before pytest imports the repository root's __init__.py (the pack's
# entry point, which needs ComfyUI) while setting up the package around these tests.
if comfyui_available():
    import_comfyui()


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    return import_comfyui()


@pytest.fixture(scope="session")
def lora_mod(comfy_path: Path) -> ModuleType:
    return import_pack("nodes.lora")
