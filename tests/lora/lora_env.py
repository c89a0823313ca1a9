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
    module_models,
    shared_models_stay_clean,
    start_comfyui,
)


def import_comfy_early() -> None:
    """Put ComfyUI (``--cpu``) in place before pytest imports the repository root's ``__init__.py``.

    pytest imports that file (the pack's entry point, which imports ``comfy_api``) while setting up
    the package around the tests, before any fixture runs.
    """
    root, _ = find_comfyui()
    if root is None or "comfy.model_management" in sys.modules:
        return
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    argv = sys.argv
    sys.argv = ["main.py", "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses the args once, picks the CPU)
    finally:
        sys.argv = argv


def pack(models_dir: Path, module: str) -> ModuleType:
    """``<pack>.<module>`` from the pack ComfyUI loaded (one copy of its classes and registries)."""
    return start_comfyui(models_dir).pack(module)
