"""Low-bit matmul backend selection: which kernel runs a packed linear, and running it.

The data path is file -> formats -> :class:`~bonsai_core.packing.PackedWeight` -> here ->
a backend from the top-level ``kernels`` package -> ComfyUI ops. This package never imports
``kernels``; the consumer registers them (``register_backends(kernels.BACKENDS)``).

Modules, each with one job and no import cycle (``cache`` <- ``table`` <- ``registry`` <-
``rules`` <- ``run``; ``tune`` on top):

* :mod:`.cache`: per-GPU cache folders, Triton's cache location;
* :mod:`.table`: the measured per-GPU tables (shipped + user), read-only on the hot path;
* :mod:`.registry`: registered backends, availability, the kernel context handed to backends;
* :mod:`.rules`: ``select_backend`` (explicit > env > measured table > rules file > static rules);
* :mod:`.run`: ``lowbit_linear``;
* :mod:`.tune`: the explicit measuring command's engine (never runs inside a prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import registry as _registry
from . import run as _run
from .registry import FALLBACK, backend_names, get_backend, unavailable_reason
from .rules import AUTO, AUTO_FP8, ENV_BACKEND, reload_tables, select_backend
from .run import lowbit_linear


def register_backends(factories: Mapping[str, Callable[[Any], Any]]) -> None:
    """Make ``factories`` (``kernels.BACKENDS``) selectable; earlier decisions are forgotten."""
    _registry.register_backends(factories)
    _run.forget_proven()
    reload_tables()


__all__ = [
    "AUTO",
    "AUTO_FP8",
    "ENV_BACKEND",
    "FALLBACK",
    "backend_names",
    "get_backend",
    "lowbit_linear",
    "register_backends",
    "reload_tables",
    "select_backend",
    "unavailable_reason",
]
