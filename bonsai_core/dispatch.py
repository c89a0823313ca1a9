"""Choose a low-bit matmul backend and run it.

Order of decision for ``lowbit_linear(..., backend=...)``:

1. an explicit ``backend`` argument other than ``"auto"``;
2. else ``$BONSAI_BACKEND`` (if set and not ``"auto"``);
3. else the selectors registered with :func:`register_selector` (newest first; the measured
   per-GPU table plugs in here), then the rules file ``dispatch-rules.json`` in the per-GPU
   cache folder (see :mod:`.kernel_cache`); the first available answer wins;
4. else the static rules: CUDA sm80+ with gemlite, fp16/bf16, small M (decode-like, ``M <= 64``)
   and a wide layer (``N >= 8192``) -> ``gemlite``; Apple MPS -> ``mlx``; everything else ->
   ``torch`` (measured on an H100: docs/benchmarks/linear-h100.md).

A requested backend that cannot run here (package missing, GPU too old, wrong device) falls
back to ``torch`` with ONE warning per (backend, reason); nothing here fails at import.

``dispatch-rules.json`` format (first matching rule wins; every field but ``backend`` optional)::

    {"rules": [{"backend": "gemlite", "bits": 1, "dtype": "bfloat16", "k": 3072, "n": 27648,
                "m_min": 0, "m_max": 64}, ...]}
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from ._kernels_loader import load_kernels

log = logging.getLogger(__name__)

ENV_BACKEND = "BONSAI_BACKEND"
# backend name -> (module in kernels/, class). Other engineers add entries here
# (e.g. "triton_dequant", "fp8"); the module is imported only when the backend is first used.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("torch_ref", "TorchReferenceBackend"),
    "gemlite": ("gemlite_backend", "GemliteBackend"),
    "mlx": ("mlx_backend", "MLXBackend"),
    "triton_dequant": ("triton_dequant", "TritonDequantBackend"),
    "fp8": ("fp8_blockwise", "FP8BlockwiseBackend"),
}
AUTO_FP8 = "auto-fp8"  # like "auto", but the measured choice may also pick the (not bit-exact) fp8 backend
_BACKEND_MODULES = BACKENDS  # old name, kept for callers of the minimal version
FALLBACK = "torch"
SMALL_M = 64  # gemlite's GEMV/split-K regime; at larger M dequant + cuBLAS wins (docs/benchmarks/linear-h100.md)
WIDE_N = 8192  # ... and only on wide layers

Selector = Callable[[torch.device, torch.dtype, int, int, int | None, int | None], str | None]
_selectors: list[Selector] = []
_instances: dict[str, Any] = {}
_availability: dict[tuple[str, str, str, int], str | None] = {}
_warned: set[tuple[str, str]] = set()
_tables: dict[str, list[dict[str, Any]]] = {}


def get_backend(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    if name not in _instances:
        pkg = load_kernels().__name__
        mod_name, cls_name = BACKENDS[name]
        _instances[name] = getattr(importlib.import_module(f"{pkg}.{mod_name}"), cls_name)()
    return _instances[name]


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype, bits: int) -> str | None:
    """None if backend ``name`` can run here, else a one-line reason (cached per device/dtype/bits)."""
    key = (name, str(device), str(dtype), bits)
    if key not in _availability:
        base = importlib.import_module(f"{load_kernels().__name__}.base")
        try:
            get_backend(name).check(device, dtype, bits)
            _availability[key] = None
        except base.BackendUnavailable as e:
            _availability[key] = str(e)
        except ImportError as e:  # a backend module whose own imports break is simply unavailable
            _availability[key] = f"{type(e).__name__}: {e}"
    return _availability[key]


def warn_once(name: str, reason: str, instead: str) -> None:
    if (name, reason) in _warned:
        return
    _warned.add((name, reason))
    log.warning("low-bit backend %r is unavailable (%s); using %r instead", name, reason, instead)


def register_selector(fn: Selector) -> Selector:
    """Add a selection hook ``fn(device, dtype, bits, m, k, n) -> backend name | None``; consulted
    (newest first) before the measured table and the static rules. Usable as a decorator."""
    _selectors.insert(0, fn)
    return fn


def unregister_selector(fn: Selector) -> None:
    if fn in _selectors:
        _selectors.remove(fn)


def _table_rules(device: torch.device) -> list[dict[str, Any]]:
    from .kernel_cache import dispatch_rules_path, read_json

    key = str(device)
    if key not in _tables:
        data = read_json(dispatch_rules_path(device))
        rules = data.get("rules", []) if isinstance(data, dict) else []
        _tables[key] = [r for r in rules if isinstance(r, dict) and isinstance(r.get("backend"), str)]
        if _tables[key]:
            log.info("using the backend rules in %s (%d rules)", dispatch_rules_path(device), len(_tables[key]))
    return _tables[key]


def reload_tables() -> None:
    """Forget cached rules and availability (after writing a new ``dispatch-rules.json``)."""
    _tables.clear()
    _availability.clear()


def _rule_matches(rule: dict[str, Any], dtype: torch.dtype, bits: int, m: int, k: int | None, n: int | None) -> bool:
    if "bits" in rule and rule["bits"] != bits:
        return False
    if "dtype" in rule and rule["dtype"] != str(dtype).removeprefix("torch."):
        return False
    if "k" in rule and rule["k"] != k:
        return False
    if "n" in rule and rule["n"] != n:
        return False
    return rule.get("m_min", 0) <= m <= rule.get("m_max", float("inf"))


def _measured_choice(device: torch.device, dtype: torch.dtype, bits: int, m: int, k: int | None, n: int | None) -> str | None:
    for fn in list(_selectors):
        name = fn(device, dtype, bits, m, k, n)
        if name and name in BACKENDS and unavailable_reason(name, device, dtype, bits) is None:
            return name
    for rule in _table_rules(device):
        if _rule_matches(rule, dtype, bits, m, k, n):
            name = rule["backend"]
            if name in BACKENDS and unavailable_reason(name, device, dtype, bits) is None:
                return name
    return None


def _static_choice(device: torch.device, dtype: torch.dtype, bits: int, m: int, n: int | None = None) -> str:
    # H100 (docs/benchmarks/linear-h100.md): gemlite beats dequant + cuBLAS only for few tokens
    # on wide layers (N >= 9216: fused qkv, MLP in, single-block in); on 3072-wide outputs the
    # torch path is as fast or faster at every M, and from M ~ 1536 torch wins everywhere.
    wide = n is None or n >= WIDE_N
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and m <= SMALL_M and wide:
        reason = unavailable_reason("gemlite", device, dtype, bits)
        if reason is None:
            return "gemlite"
        warn_once("gemlite", reason, FALLBACK)
    if device.type == "mps":
        reason = unavailable_reason("mlx", device, dtype, bits)
        if reason is None:
            return "mlx"
        warn_once("mlx", reason, FALLBACK)
    return FALLBACK


def select_backend(
    device: torch.device,
    dtype: torch.dtype,
    bits: int,
    m: int,
    requested: str = "auto",
    *,
    k: int | None = None,
    n: int | None = None,
) -> str:
    """The backend name that will run an ``[m, k] x [k, n]`` low-bit matmul here."""
    device = torch.device(device)
    if requested == "auto":
        requested = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
    if requested not in ("auto", AUTO_FP8):
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r} (argument or ${ENV_BACKEND}); choose one of {sorted(BACKENDS)} or 'auto'")
        reason = unavailable_reason(requested, device, dtype, bits)
        if reason is None:
            return requested
        warn_once(requested, reason, FALLBACK)
        return FALLBACK
    if requested == AUTO_FP8:
        from .autotune_table import fp8_allowed

        with fp8_allowed():
            return _measured_choice(device, dtype, bits, m, k, n) or _static_choice(device, dtype, bits, m, n)
    return _measured_choice(device, dtype, bits, m, k, n) or _static_choice(device, dtype, bits, m, n)


def _validate(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lowbit_linear expects a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"lowbit_linear input must be float16, bfloat16 or float32, got {x.dtype}")
    if bits not in (1, 2):
        raise ValueError(f"bits must be 1 (binary) or 2 (ternary), got {bits}")
    if codes.dtype != torch.uint8 or codes.ndim != 2 or scales.ndim != 2 or scales.shape[0] != codes.shape[0]:
        raise ValueError(
            f"packed weight must be uint8 codes [N, K*bits/8] and scales [N, K/128]; got codes {codes.dtype} {list(codes.shape)}, scales {list(scales.shape)}"
        )
    k = scales.shape[1] * 128
    if codes.shape[1] * (8 // bits) != k:
        raise ValueError(
            f"codes {list(codes.shape)} at {bits} bit imply K={codes.shape[1] * 8 // bits}, scales {list(scales.shape)} imply K={k}"
        )
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (shape {list(x.shape)}), the layer expects {k}")
    if x.device != codes.device:
        raise ValueError(f"input is on {x.device} but the packed weight is on {codes.device}")
    return k


def lowbit_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    *,
    backend: str = "auto",
    state: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for a canonical packed ``W``; any leading dims; returns ``x.dtype``.

    ``state`` is the calling layer's dict where backends cache prepared weights; without one
    nothing is cached (correct, but prepares the weight on every call).
    """
    k = _validate(x, codes, scales, bits)
    n = codes.shape[0]
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    m = x2d.shape[0]
    if m == 0:
        return x.new_empty(*lead, n)
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    name = select_backend(x.device, x.dtype, bits, m, backend, k=k, n=n)
    y = get_backend(name).matmul(x2d, codes, scales, bits, state if state is not None else {})
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.reshape(*lead, n)


def _register_measured_table() -> None:
    # the per-GPU measured selection (bonsai_core/autotune_table.py, fastpath work)
    from .autotune_table import measured_selector

    register_selector(measured_selector)


_register_measured_table()
