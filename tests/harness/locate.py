"""Finding ComfyUI: ``$COMFYUI_PATH``, a parent ``custom_nodes/`` of this repository, or ``~/comfy/ComfyUI``."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "bonsai_image"
ENV_VAR = "COMFYUI_PATH"
ENABLE_HINT = f"set {ENV_VAR}=/path/to/ComfyUI (a checkout with main.py and comfy/sd.py), or clone ComfyUI to ~/comfy/ComfyUI"


def _is_comfyui(p: Path) -> bool:
    return (p / "main.py").is_file() and (p / "comfy" / "sd.py").is_file() and (p / "nodes.py").is_file()


def find_comfyui() -> tuple[Path | None, str]:
    """(ComfyUI root, how it was found) or (None, why none was found)."""
    tried = []
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser().resolve()
        if _is_comfyui(p):
            return p, f"${ENV_VAR}"
        tried.append(f"${ENV_VAR}={env} (not a ComfyUI checkout)")
    if REPO.parent.name == "custom_nodes" and _is_comfyui(REPO.parent.parent):
        return REPO.parent.parent, "parent custom_nodes/"
    home = Path.home() / "comfy" / "ComfyUI"
    if _is_comfyui(home):
        return home, "~/comfy/ComfyUI"
    tried.append(f"{home} (absent)")
    return None, "no ComfyUI checkout found: tried " + "; ".join(tried)


def comfyui_version(root: Path) -> str:
    """``comfyui_version.__version__`` read from the file (no import needed)."""
    f = root / "comfyui_version.py"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read_text()) if f.is_file() else None
    return m.group(1) if m else "unknown"


def link_pack(custom_nodes: Path) -> Path:
    """Link this checkout into ``custom_nodes/<PACK_DIR_NAME>``.

    A link left by another checkout (an earlier clone, a CI workspace) is re-pointed atomically; a real
    folder of that name is a user's installed copy and is never touched.
    """
    link = custom_nodes / PACK_DIR_NAME
    if link.is_symlink():
        if link.resolve() != REPO:
            tmp = custom_nodes / f".{PACK_DIR_NAME}.{os.getpid()}.link"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(REPO, target_is_directory=True)
            os.replace(tmp, link)
    elif link.exists():
        raise RuntimeError(f"{link} is an installed copy of the pack, not a link to {REPO}; move it away to run the ComfyUI tests")
    else:
        link.symlink_to(REPO, target_is_directory=True)
    return link


def pack_link(comfy_root: Path) -> Path:
    """Where ComfyUI loads this checkout from: the repository itself when it already sits in that ComfyUI's
    ``custom_nodes/`` (under any folder name), else a link made by :func:`link_pack`."""
    custom_nodes = comfy_root / "custom_nodes"
    if REPO.parent.resolve() == custom_nodes.resolve():
        return REPO
    return link_pack(custom_nodes)
