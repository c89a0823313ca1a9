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
    import_comfy_early,
    module_models,
    shared_models_stay_clean,
)


