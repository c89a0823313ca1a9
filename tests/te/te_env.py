"""The shared in-process ComfyUI harness (tests/comfyui_env.py) for the text encoder tests."""

from __future__ import annotations

import sys
from pathlib import Path

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
)


def import_comfy_early() -> None:
    """ComfyUI (``--cpu``) importable before pytest imports the repository root's ``__init__.py``
    (the pack entry point imports ``comfy_api``) while collecting the package around the tests."""
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
