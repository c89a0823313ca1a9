"""Choose a low-bit matmul backend and run it. (Minimal version: the kernels work extends this.)"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import torch

from ._kernels_loader import load_kernels

log = logging.getLogger(__name__)

ENV_BACKEND = "BONSAI_BACKEND"
_BACKEND_MODULES = {"torch": ("torch_ref", "TorchReferenceBackend")}
_instances: dict[str, Any] = {}


def get_backend(name: str) -> Any:
    if name not in _BACKEND_MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_BACKEND_MODULES)} or 'auto'")
    if name not in _instances:
        pkg = load_kernels().__name__
        mod_name, cls_name = _BACKEND_MODULES[name]
        _instances[name] = getattr(importlib.import_module(f"{pkg}.{mod_name}"), cls_name)()
    return _instances[name]


def select_backend(device: torch.device, dtype: torch.dtype, bits: int, m: int, requested: str = "auto") -> str:
    requested = os.environ.get(ENV_BACKEND, requested) if requested == "auto" else requested
    return "torch" if requested == "auto" else requested


def lowbit_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    *,
    backend: str = "auto",
    state: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for a canonical packed ``W``; any leading dims; returns ``x.dtype``."""
    k = scales.shape[1] * 128
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {k}")
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k).contiguous()
    name = select_backend(x.device, x.dtype, bits, x2d.shape[0], backend)
    y = get_backend(name).matmul(x2d, codes, scales, bits, state if state is not None else {})
    return y.reshape(*lead, codes.shape[0])
