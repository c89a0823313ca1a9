"""Real ComfyUI in-process (CPU) and the pack imported as a package, for the LoRA tests.

ComfyUI is found at ``$COMFYUI_PATH`` or ``~/comfy/ComfyUI``. The repository root is imported as the
package ``bonsai_image`` through a symlink in a temporary folder (never by putting the repo itself on
``sys.path``: its ``nodes`` folder would shadow ComfyUI's ``nodes`` module).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "bonsai_image"


def _comfyui_path() -> Path | None:
    for cand in (os.environ.get("COMFYUI_PATH"), "~/comfy/ComfyUI"):
        if cand and (Path(cand).expanduser() / "comfy" / "model_patcher.py").is_file():
            return Path(cand).expanduser().resolve()
    return None


def comfyui_available() -> bool:
    return _comfyui_path() is not None


def import_comfyui() -> Path:
    path = _comfyui_path()
    if path is None:
        pytest.skip("ComfyUI checkout not found (set COMFYUI_PATH)")
    if "comfy.model_management" not in sys.modules:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        argv = sys.argv
        sys.argv = ["main.py", "--cpu"]
        try:
            import comfy.options

            comfy.options.enable_args_parsing()
            import comfy.model_management  # noqa: F401  (parses the args once, picks the CPU)
        finally:
            sys.argv = argv
    return path


def import_pack(module: str) -> ModuleType:
    """``bonsai_image.<module>`` with ComfyUI importable."""
    import_comfyui()
    if PACKAGE not in sys.modules or not any(Path(p).resolve() == REPO for p in sys.modules[PACKAGE].__path__):
        link_dir = Path(tempfile.mkdtemp(prefix="bonsai_pkg_"))
        (link_dir / PACKAGE).symlink_to(REPO, target_is_directory=True)
        sys.path.insert(0, str(link_dir))
    return importlib.import_module(f"{PACKAGE}.{module}")
