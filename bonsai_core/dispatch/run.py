"""``lowbit_linear``: ``x @ W.T`` for a packed weight, through the selected backend."""

from __future__ import annotations

from typing import Any

import torch

from ..packing import PackedWeight
from .registry import FALLBACK, demote, get_backend
from .rules import AUTO, forget_choices, select_backend

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
# (backend, device, dtype, bits) that ran once: a later failure there is a real error, not a
# backend that cannot work on this machine
_proven: set[tuple[str, torch.device, torch.dtype, int]] = set()


def lowbit_linear(x: torch.Tensor, weight: PackedWeight, *, backend: str = AUTO, state: dict[str, Any] | None = None) -> torch.Tensor:
    """``x @ W.T`` for a canonical packed ``W``; any leading dims; returns ``x.dtype``.

    ``weight``'s own invariants were checked when it was built; only the input is checked here.
    ``state`` is the calling layer's dict where backends cache prepared weights; without one
    nothing is cached (correct, but prepares the weight on every call).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lowbit_linear expects a torch.Tensor input, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"lowbit_linear input must be float16, bfloat16 or float32, got {x.dtype}")
    k, n = weight.in_features, weight.out_features
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (shape {list(x.shape)}), the layer expects {k}")
    if x.device != weight.codes.device:
        raise ValueError(f"input is on {x.device} but the packed weight is on {weight.codes.device}")
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    m = x2d.shape[0]
    if m == 0:
        return x.new_empty(*lead, n)
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    name = select_backend(x.device, x.dtype, weight.bits, m, backend, k=k, n=n)
    y = _run(name, x2d, weight, state if state is not None else {})
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.reshape(*lead, n)


def _run(name: str, x2d: torch.Tensor, weight: PackedWeight, state: dict[str, Any]) -> torch.Tensor:
    key = (name, x2d.device, x2d.dtype, weight.bits)
    if key in _proven or name == FALLBACK:
        return get_backend(name).matmul(x2d, weight, state)
    # Static rules pick a backend without trying it first; if its very first call here fails
    # (no kernel for this GPU, a broken optional package), the prompt goes on with the reference
    # backend and the choice is not made again.
    try:
        y = get_backend(name).matmul(x2d, weight, state)
    except torch.cuda.OutOfMemoryError:
        raise  # memory is ComfyUI's to manage (it frees and retries), not a reason to switch kernels
    except Exception as e:  # noqa: BLE001 - any other first-call failure means "cannot run here"
        demote(name, x2d.device, x2d.dtype, weight.bits, e)
        forget_choices()
        state.clear()
        return get_backend(FALLBACK).matmul(x2d, weight, state)
    _proven.add(key)
    return y


def forget_proven() -> None:
    """Forget which backends ran (after registering new ones)."""
    _proven.clear()
