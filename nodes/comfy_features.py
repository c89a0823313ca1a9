"""Optional ComfyUI helpers, looked up by name once: a helper a ComfyUI version lacks (or renamed)
turns off the one feature that uses it, with one log line, never the pack.

Only helpers whose absence leaves a working pack are listed here; what the pack cannot work without
(``comfy.sd.load_diffusion_model_state_dict``, ``comfy.ops.manual_cast``, the V3 ``io`` API) is
imported directly by the modules that need it, and a failure there disables that module's nodes
(the pack root imports each node module on its own). docs/COMPAT.md lists every symbol and the
ComfyUI versions it was checked against.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..bonsai_core.escape import escaping_logger

log = escaping_logger("bonsai_image.comfy_features")

_MISSING = object()
_cache: dict[tuple[str, str], Any] = {}
_reported: set[tuple[str, str]] = set()


def optional(module: str, name: str, feature: str) -> Any | None:
    """``module.name`` if this ComfyUI has it, else None (logged once, naming the ``feature`` it turns off)."""
    key = (module, name)
    value = _cache.get(key, _MISSING)
    if value is _MISSING:
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            value = None
            if key not in _reported:
                _reported.add(key)
                log.warning("Bonsai Image: this ComfyUI has no %s.%s (%s): %s is off", module, name, type(e).__name__, feature)
        _cache[key] = value
    return value


def _noop() -> None:
    return None


def interrupt_check() -> Callable[[], None]:
    """``comfy.ops.run_every_op`` (the per-layer cancel check of stock ops), or a no-op."""
    return optional("comfy.ops", "run_every_op", "cancelling inside a packed layer (cancel still acts between steps)") or _noop


def supports_non_blocking(device: Any) -> bool:
    """``comfy.model_management.device_supports_non_blocking``; False (synchronous copies) without it."""
    fn = optional("comfy.model_management", "device_supports_non_blocking", "asynchronous copies of offloaded packed layers")
    return bool(fn(device)) if fn is not None else False


def missing() -> dict[tuple[str, str], str]:
    """The helpers looked up so far that this ComfyUI lacks (for tests and diagnostics)."""
    return {k: "missing" for k, v in _cache.items() if v is None}
