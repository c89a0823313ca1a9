"""Which backend runs an ``[m, k] x [k, n]`` low-bit matmul: decided without measuring.

Order of decision for ``select_backend(..., requested)``:

1. an explicit ``requested`` backend other than ``auto`` / ``auto-fp8``;
2. else ``$BONSAI_BACKEND`` (if set and not ``auto``);
3. else the measured table for this GPU (:mod:`.table`: the user's tuned entries, then the
   table shipped for known GPUs), among the backends that can run here;
4. else ``dispatch-rules.json`` in the per-GPU cache folder (hand-written, see below);
5. else the static rules, written from the H100 measurements in docs/benchmarks and the shipped
   table, and right on any CUDA GPU because they follow from where the time goes:

   * CUDA with Triton -> ``triton_dequant`` (unpack into one shared scratch + cuBLAS). It won
     every Klein shape and token bucket of the H100 table, by 1.0-3.3x over ``torch`` (it writes
     the dense weight once at memory speed and leaves the GEMM to cuBLAS), and beat ``gemlite``
     at every token count including 1 (gemlite's GEMV took 0.35-0.65 ms per Klein layer, the
     dequant pass plus cuBLAS 0.1-0.2 ms), so gemlite is only used when asked for or measured;
   * ``auto-fp8`` on CUDA with FP8 tensor cores -> ``fp8_rowwise`` (codes unpacked to e4m3 with one
     scale per row into the shared scratch, one scale per token, cuBLASLt rowwise FP8 GEMM). On an
     H200 it was the fastest Bonsai path at every measured size (docs/benchmarks/h200.md: 0.83x /
     0.78x of stock bf16 per step at 1024^2 B1 / B4, 1.20x at 512^2 B1 where the exact path is
     1.60x), so no token threshold applies;
   * Apple MPS -> ``mlx``; anything else -> ``torch``.

Nothing here measures: a new resolution costs one table look-up, never a benchmark. A requested
backend that cannot run here falls back to ``torch`` with ONE warning per (backend, reason).

``dispatch-rules.json`` (first matching rule wins; every field but ``backend`` optional)::

    {"rules": [{"backend": "gemlite", "bits": 1, "dtype": "bfloat16", "k": 3072, "n": 27648,
                "m_min": 0, "m_max": 64}, ...]}
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..escape import escaping_logger
from .cache import dispatch_rules_path, read_json
from .registry import FALLBACK, backend_names, is_exact, is_resident, unavailable_reason, warn_once
from .table import entry_key, get_table

log = escaping_logger("bonsai_core.dispatch")

ENV_BACKEND = "BONSAI_BACKEND"
AUTO = "auto"
AUTO_FP8 = "auto-fp8"  # like "auto", but may also pick the (not bit-exact) fp8 backend
# Exact paths in order of preference for the measured table's candidates (ties go first).
PREFERENCE = ("triton_dequant", "gemlite", "torch")
FP8_BACKEND = "fp8_rowwise"

_rules: dict[str, list[dict[str, Any]]] = {}
_choices: dict[tuple[Any, ...], str] = {}


def forget_choices() -> None:
    """Decide again on next use (after a backend was found not to work here)."""
    _choices.clear()


def reload_tables() -> None:
    """Forget cached rules, choices and availability (after writing a table or a rules file)."""
    from .registry import forget_availability
    from .table import reset_tables

    _rules.clear()
    _choices.clear()
    reset_tables()
    forget_availability()


def _file_rules(device: torch.device) -> list[dict[str, Any]]:
    key = str(device)
    if key not in _rules:
        data = read_json(dispatch_rules_path(device))
        rules = data.get("rules", []) if isinstance(data, dict) else []
        _rules[key] = [r for r in rules if isinstance(r, dict) and isinstance(r.get("backend"), str)]
        if _rules[key]:
            log.info("using the backend rules in %s (%d rules)", dispatch_rules_path(device), len(_rules[key]))
    return _rules[key]


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


def _usable(name: str, device: torch.device, dtype: torch.dtype, bits: int) -> bool:
    return name in backend_names() and unavailable_reason(name, device, dtype, bits) is None


def table_candidates(device: torch.device, dtype: torch.dtype, bits: int, allow_fp8: bool) -> list[str]:
    """The backends the measured table chooses among here, in static preference order.

    Resident backends (a second, unpacked copy of every weight) are never candidates: they are
    used only when named explicitly, so ``auto`` keeps the packed model's memory footprint."""
    names = [b for b in PREFERENCE if b in backend_names()]
    names += [b for b in backend_names() if b not in names]
    out = []
    for b in names:
        if not _usable(b, device, dtype, bits) or is_resident(b):
            continue
        if allow_fp8 or is_exact(b):  # auto-fp8 may also pick any inexact (FP8-activation) backend
            out.append(b)
    return out


def table_namespace(allow_fp8: bool) -> str:
    return "backend-fp8" if allow_fp8 else "backend"


def _measured_choice(
    device: torch.device, dtype: torch.dtype, bits: int, m: int, k: int | None, n: int | None, allow_fp8: bool
) -> str | None:
    if k is not None and n is not None:
        hit = get_table(device).lookup(entry_key(table_namespace(allow_fp8), n, k, bits, dtype, m))
        if hit is not None and hit["winner"] in table_candidates(device, dtype, bits, allow_fp8):
            return str(hit["winner"])
    for rule in _file_rules(device):
        if _rule_matches(rule, dtype, bits, m, k, n) and _usable(rule["backend"], device, dtype, bits) and not is_resident(rule["backend"]):
            if allow_fp8 or is_exact(rule["backend"]):
                return str(rule["backend"])
    return None


def static_choice(device: torch.device, dtype: torch.dtype, bits: int, m: int, *, allow_fp8: bool = False) -> str:
    """The static rules (see the module docstring); logs once when a preferred backend is missing."""

    def take(name: str) -> bool:
        if name not in backend_names():
            return False
        reason = unavailable_reason(name, device, dtype, bits)
        if reason is None:
            return True
        warn_once(name, reason, FALLBACK)
        return False

    if device.type == "cuda":
        if allow_fp8 and take(FP8_BACKEND):
            return FP8_BACKEND
        if take("triton_dequant"):
            return "triton_dequant"
    if device.type == "mps" and take("mlx"):
        return "mlx"
    return FALLBACK


def select_backend(
    device: torch.device,
    dtype: torch.dtype,
    bits: int,
    m: int,
    requested: str = AUTO,
    *,
    k: int | None = None,
    n: int | None = None,
) -> str:
    """The backend name that will run an ``[m, k] x [k, n]`` low-bit matmul here."""
    if requested == AUTO:
        requested = os.environ.get(ENV_BACKEND, "").strip().lower() or AUTO
    memo = (device, dtype, bits, m, requested, k, n)  # torch.device hashes by type and index
    hit = _choices.get(memo)  # called for every linear of every step: decide once per shape
    if hit is not None:
        return hit
    device = torch.device(device)
    if requested not in (AUTO, AUTO_FP8):
        if requested not in backend_names():
            choices = ", ".join(backend_names())
            raise ValueError(f"unknown backend {requested!r} (argument or ${ENV_BACKEND}); choose one of {choices} or 'auto'")
        reason = unavailable_reason(requested, device, dtype, bits)
        if reason is None:
            name = requested
        else:
            warn_once(requested, reason, FALLBACK)
            name = FALLBACK
    else:
        allow_fp8 = requested == AUTO_FP8
        name = _measured_choice(device, dtype, bits, m, k, n, allow_fp8) or static_choice(device, dtype, bits, m, allow_fp8=allow_fp8)
    _choices[memo] = name
    return name
