"""Where low-bit kernel caches and measured tables live between runs.

Compiled kernels and tuning results are valid for one GPU model and one software version, so
they are kept in ``<root>/<gpu>-<cc>-torch<ver>-triton<ver>/`` with ``<root>`` =
``$BONSAI_CACHE_DIR`` or the platform's user cache folder (``~/.cache/bonsai-image`` on Linux,
``~/Library/Caches/bonsai-image`` on macOS, ``%LOCALAPPDATA%\\bonsai-image\\Cache`` on Windows):

* ``triton/``: Triton's own cache (``TRITON_CACHE_DIR`` is set only if the user has not set it);
* ``dispatch.json``: the measured selection table (:mod:`.table`), written by the tuning command;
* ``dispatch-rules.json``: optional hand-written selection rules (:mod:`.rules`);
* files a backend keeps for itself (e.g. gemlite's autotune table), through its kernel context.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..escape import escaping_logger

log = escaping_logger(__name__)

ENV_CACHE_DIR = "BONSAI_CACHE_DIR"
DISPATCH_TABLE = "dispatch.json"
DISPATCH_RULES = "dispatch-rules.json"

_triton_cache_set: set[str] = set()


def user_cache_root() -> Path:
    """``$BONSAI_CACHE_DIR`` or the platform's per-user cache folder for this project."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "bonsai-image" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "bonsai-image"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "bonsai-image"


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except Exception:  # triton missing or broken (Windows): the tag still has to be well defined
        return "none"


def device_tag(device: torch.device | str | None = None) -> str:
    """A folder name that changes whenever tuned kernels stop being valid: GPU model, compute
    capability, torch and triton versions."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_ver = torch.__version__.split("+")[0]
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        arch = f"gfx-{getattr(props, 'gcnArchName', '?')}" if torch.version.hip else f"sm{props.major}{props.minor}"
        tag = f"{props.name}-{arch}-torch{torch_ver}-triton{_triton_version()}"
    else:
        tag = f"{dev.type}-torch{torch_ver}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("_")


def cache_dir(device: torch.device | str | None = None, *, create: bool = True) -> Path:
    path = user_cache_root() / device_tag(device)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_triton_cache(device: torch.device | str | None = None) -> Path | None:
    """Point Triton's cache into the per-GPU folder unless the user already chose one.

    Must run before the first kernel compiles; Triton reads the variable at compile time.
    Returns the directory in use, or None if the user's own setting is kept.
    """
    if "TRITON_CACHE_DIR" in os.environ and os.environ["TRITON_CACHE_DIR"] not in _triton_cache_set:
        return None
    path = cache_dir(device) / "triton"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(path)
    _triton_cache_set.add(str(path))
    return path


def dispatch_rules_path(device: torch.device | str | None = None) -> Path:
    return cache_dir(device, create=False) / DISPATCH_RULES


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None (with one log line) if it is missing or unreadable:
    caches are performance only, never a reason to fail."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache file %s: %s", path, e)
        return None
