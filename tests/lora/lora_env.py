"""Access to the pack as the in-process ComfyUI of ``tests/comfyui_env.py`` loaded it."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from comfyui_env import (  # noqa: E402, F401  (fixtures re-exported)
    ComfyUISession,
    comfy_models,
    comfyui,
    find_comfyui,
    import_comfy_early,
    module_models,
    shared_models_stay_clean,
    start_comfyui,
)


def pack(models_dir: Path, module: str) -> ModuleType:
    """``<pack>.<module>`` from the pack ComfyUI loaded (one copy of its classes and registries)."""
    return start_comfyui(models_dir).pack(module)
