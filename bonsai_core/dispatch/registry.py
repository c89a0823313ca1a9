"""The backends this process can use: handed in by the consumer, built lazily, checked once.

``bonsai_core`` never imports the ``kernels`` package; whoever owns both (the ComfyUI nodes, the
tooling, the tests) calls :func:`register_backends` with ``kernels.BACKENDS``. Each backend is
constructed on first use with a kernel context (:func:`kernel_context`): the per-GPU cache folder
and a chooser that answers backend-internal choices from the measured table, or with the static
preference (first candidate). The chooser never measures on a user's prompt; only inside
:func:`measuring` (the explicit tuning command) does it time the candidates.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..escape import escaping_logger
from .cache import cache_dir, ensure_triton_cache
from .table import entry_key, get_table

log = escaping_logger("bonsai_core.dispatch")

FALLBACK = "torch"

# name -> factory(context) -> backend; insertion order is the order users see
_factories: dict[str, Callable[[Any], Any]] = {}
_instances: dict[str, Any] = {}
_availability: dict[tuple[str, str, str, int], str | None] = {}
_warned: set[tuple[str, str]] = set()
_triton_cache_ready: set[str] = set()

# Set only by the tuning command: (key, candidates, device) -> winner, measuring each candidate.
Measurer = Callable[[str, Mapping[str, Callable[[], Any]], torch.device], str]
_measurer: contextvars.ContextVar[Measurer | None] = contextvars.ContextVar("bonsai_measurer", default=None)


def register_backends(factories: Mapping[str, Callable[[Any], Any]]) -> None:
    """Make ``factories`` (e.g. ``kernels.BACKENDS``) selectable; re-registering a name replaces it."""
    for name, factory in factories.items():
        if _factories.get(name) is not factory:
            _factories[name] = factory
            _instances.pop(name, None)
    _availability.clear()


def backend_names() -> list[str]:
    return list(_factories)


def _no_backends() -> RuntimeError:
    return RuntimeError(
        "no low-bit backends are registered: call bonsai_core.dispatch.register_backends(kernels.BACKENDS) "
        "(the ComfyUI nodes and the tooling do this on import)"
    )


@contextlib.contextmanager
def measuring(measurer: Measurer) -> Iterator[None]:
    """Within this block, backend-internal choices without a table entry are measured."""
    token = _measurer.set(measurer)
    try:
        yield
    finally:
        _measurer.reset(token)


def measurer() -> Measurer | None:
    return _measurer.get()


def _choose(
    namespace: str, weight: Any, m: int, dtype: torch.dtype, candidates: Mapping[str, Callable[[], Any]], device: torch.device
) -> str:
    names = list(candidates)
    if len(names) == 1:
        return names[0]
    key = entry_key(namespace, weight.out_features, weight.in_features, weight.bits, dtype, m)
    hit = get_table(device).lookup(key)
    if hit is not None and hit.get("winner") in candidates:
        return str(hit["winner"])
    measure = _measurer.get()
    if measure is not None:
        return measure(key, candidates, device)
    return names[0]


def _cache_dir(device: torch.device) -> Path | None:
    return cache_dir(device) if device.type == "cuda" else None


def kernel_context() -> Any:
    """The context every backend is built with (a ``kernels.base.KernelContext`` look-alike:
    bonsai_core cannot import the kernels package, so it passes a duck-typed object)."""
    return _Context()


class _Context:
    """``cache_dir`` and ``choose`` as ``kernels.base.KernelContext`` defines them."""

    cache_dir = staticmethod(_cache_dir)
    choose = staticmethod(_choose)


def get_backend(name: str) -> Any:
    if name not in _factories:
        if not _factories:
            raise _no_backends()
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()} or 'auto'")
    if name not in _instances:
        _instances[name] = _factories[name](kernel_context())
    return _instances[name]


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype, bits: int) -> str | None:
    """None if backend ``name`` can run here, else a one-line reason (cached per device/dtype/bits)."""
    key = (name, str(device), str(dtype), bits)
    if key not in _availability:
        if name not in _factories:
            return f"{name!r} is not a registered backend ({', '.join(backend_names()) or 'none registered'})"
        if device.type == "cuda" and str(device) not in _triton_cache_ready:
            ensure_triton_cache(device)  # before any backend's import or check can compile a kernel
            _triton_cache_ready.add(str(device))
        try:
            get_backend(name).check(device, dtype, bits)
            _availability[key] = None
        except Exception as e:  # noqa: BLE001 - a backend that cannot even be checked cannot run here
            # BackendUnavailable carries a user-facing reason; anything else (an ImportError of
            # a broken optional package) is named by its type
            _availability[key] = str(e) if type(e).__name__ == "BackendUnavailable" else f"{type(e).__name__}: {e}"
    return _availability[key]


def demote(name: str, device: torch.device, dtype: torch.dtype, bits: int, error: BaseException) -> None:
    """Mark ``name`` unusable here after its first call failed (a kernel that does not compile on
    this GPU, a broken optional package): later selections skip it, with one warning."""
    reason = f"its first call failed: {type(error).__name__}: {error}"
    _availability[(name, str(device), str(dtype), bits)] = reason
    warn_once(name, reason, FALLBACK)


def is_exact(name: str) -> bool:
    """Whether backend ``name`` computes the exact product (FP8-activation paths do not)."""
    return bool(getattr(get_backend(name), "exact", True))


def is_resident(name: str) -> bool:
    """Whether backend ``name`` keeps a per-layer copy of the weight in another format (about one
    byte per weight: several GB for Klein 4B). Such backends break the pack's memory promise, so
    they run only when asked for by name, never by ``auto``/``auto-fp8`` or a measured table."""
    return bool(getattr(get_backend(name), "resident", False))


def warn_once(name: str, reason: str, instead: str) -> None:
    if (name, reason) in _warned:
        return
    _warned.add((name, reason))
    log.warning("low-bit backend %r is unavailable (%s); using %r instead", name, reason, instead)


def forget_availability() -> None:
    """Re-check backends on next use (tests; after installing a package)."""
    _availability.clear()
    _warned.clear()
