"""Measured per-GPU selection: on first use of a (layer shape, token bucket) time each candidate
briefly on the real input, keep the fastest, and remember it in ``dispatch.json`` in the per-GPU
kernel cache folder (:mod:`bonsai_core.kernel_cache`), so later processes skip the measuring.

Why measure instead of rules: which path wins (gemlite at a few tokens, dense-scratch + cuBLAS
or FP8 at thousands) depends on the GPU, the layer shape and the token count, and the crossover
moved by 2x between the shapes measured on an H100 (peers.md "Measured on an H100").

One table holds several namespaces: ``backend`` (which low-bit backend :func:`lowbit_linear`
uses) and backend-internal ones (e.g. ``fp8`` kernel variants). A table shipped with the
package for a known GPU (``bonsai_core/tuned/<device tag>.json``) is read when the user's cache
has no entry, which makes the first image in a fresh install fast too.

Set ``BONSAI_AUTOTUNE=0`` to never measure (the first candidate, the static preference, wins).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .kernel_cache import DISPATCH_TABLE, cache_dir, device_tag, read_json

log = logging.getLogger(__name__)

ENV_AUTOTUNE = "BONSAI_AUTOTUNE"
TABLE_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "tuned"


def m_bucket(m: int) -> int:
    """Token counts are grouped by the next power of two (at least 1): a 512^2 and a 1024^2
    image land in different buckets, batch 4 of 512^2 shares one with 1024^2 batch 1."""
    return 1 << max(0, (int(m) - 1).bit_length())


def entry_key(namespace: str, n: int, k: int, bits: int, dtype: torch.dtype, m: int) -> str:
    return f"{namespace}|N{n}|K{k}|b{bits}|{str(dtype).removeprefix('torch.')}|M{m_bucket(m)}"


def autotune_enabled() -> bool:
    return os.environ.get(ENV_AUTOTUNE, "1").strip() not in ("0", "false", "no", "off")


def time_candidate(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, reps: int = 3) -> float:
    """Median milliseconds of ``fn()``; CUDA events on GPU, a host clock elsewhere. The warm-up
    call absorbs JIT compilation and backend-internal first-use work."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class MeasuredTable:
    """``dispatch.json``: {"version", "device", "entries": {key: {"winner", "ms": {name: ms}}}}."""

    def __init__(self, path: Path, device: str, shipped: Path | None = None) -> None:
        self.path = path
        self.device = device
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._shipped: dict[str, dict[str, Any]] = {}
        for src, dst in ((shipped, self._shipped), (path, self._entries)):
            data = read_json(src) if src is not None else None
            if isinstance(data, dict) and data.get("version") == TABLE_VERSION and isinstance(data.get("entries"), dict):
                dst.update(data["entries"])

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key) or self._shipped.get(key)

    def entries(self) -> dict[str, dict[str, Any]]:
        return {**self._shipped, **self._entries}

    def record(self, key: str, winner: str, ms: dict[str, float]) -> None:
        with self._lock:
            self._entries[key] = {"winner": winner, "ms": {k: round(v, 4) for k, v in ms.items()}}
            payload = {"version": TABLE_VERSION, "device": self.device, "entries": self._entries}
            try:
                with atomic_path(self.path) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
            except OSError as e:  # a read-only cache must not break inference
                log.warning("could not save the dispatch table %s: %s", self.path, e)

    def pick(self, key: str, candidates: dict[str, Callable[[], Any]], device: torch.device, *, reps: int = 3) -> str:
        """The remembered winner among ``candidates`` (dict order = static preference), measuring
        each once if ``key`` is new. A candidate that raises is skipped and logged."""
        hit = self.lookup(key)
        if hit is not None and hit.get("winner") in candidates:
            return str(hit["winner"])
        names = list(candidates)
        if len(names) == 1 or not autotune_enabled():
            return names[0]
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        for name in names:
            try:
                ms[name] = time_candidate(candidates[name], device, reps=reps)
            except Exception as e:  # noqa: BLE001 - any failure just disqualifies the candidate
                log.warning("autotune %s: candidate %s failed (%s: %s); skipping it", key, name, type(e).__name__, e)
        if not ms:
            raise RuntimeError(f"autotune {key}: every candidate failed ({', '.join(names)})")
        winner = min(ms, key=ms.__getitem__)
        log.info(
            "autotune %s -> %s (%s; %.1f s)", key, winner, ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), time.perf_counter() - t0
        )
        self.record(key, winner, ms)
        return winner


_tables: dict[str, MeasuredTable] = {}
_tables_lock = threading.Lock()


_by_device: dict[str, MeasuredTable] = {}


def get_table(device: torch.device) -> MeasuredTable:
    """The table for ``device``'s GPU model and software versions (one per process)."""
    # called for every linear of every step: skip device_tag() (device properties, a regex)
    fast = _by_device.get(str(device))
    if fast is not None:
        return fast
    tag = device_tag(device)
    with _tables_lock:
        table = _tables.get(tag)
        if table is None:
            shipped = SHIPPED_DIR / f"{tag}.json"
            table = MeasuredTable(cache_dir(device) / DISPATCH_TABLE, tag, shipped if shipped.is_file() else None)
            _tables[tag] = table
        _by_device[str(device)] = table
        return table


def reset_tables() -> None:
    """Forget loaded tables (tests; after changing ``BONSAI_CACHE_DIR``)."""
    with _tables_lock:
        _tables.clear()
        _by_device.clear()


# ---------------------------------------------------------------------------
# The dispatch hook: a selector for bonsai_core.dispatch.register_selector
# ---------------------------------------------------------------------------

# Static preference (ties and BONSAI_AUTOTUNE=0 pick the first): exact paths first.
PREFERENCE = ("triton_dequant", "gemlite", "torch")
FP8_BACKEND = "fp8"
_fp8_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("bonsai_fp8_allowed", default=False)


@contextlib.contextmanager
def fp8_allowed(allow: bool = True) -> Iterator[None]:
    """Within this block the measured choice may pick the (not bit-exact) FP8 backend; that is
    what ``backend="auto-fp8"`` means. Plain ``auto`` only picks exact paths."""
    token = _fp8_allowed.set(allow)
    try:
        yield
    finally:
        _fp8_allowed.reset(token)


def _synthetic_layer(device: torch.device, n: int, k: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    # random, not zeros: zeros can run faster than real data (METHOD.md)
    from .packing import pack_codes

    q = torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, device=device)
    codes = pack_codes(q, bits)  # ternary: only the valid codes {0, 1, 2}
    scales = (torch.rand(n, k // GROUP, device=device) * 0.02 + 1e-4).half()
    return codes, scales


GROUP = 128


def measured_selector(device: torch.device, dtype: torch.dtype, bits: int, m: int, k: int | None, n: int | None) -> str | None:
    """``dispatch`` selector: the measured winner for (GPU, N, K, bits, dtype, M bucket) among
    the backends that can run here. Measures on a synthetic layer of the same shape the first
    time (weights' values do not change the speed), then answers from the table."""
    if device.type != "cuda" or k is None or n is None:
        return None
    from . import dispatch  # late: dispatch imports this module to register the selector

    allow_fp8 = _fp8_allowed.get()
    names = [b for b in PREFERENCE if b in dispatch.BACKENDS]
    names += [b for b in dispatch.BACKENDS if b not in names and b not in ("mlx", FP8_BACKEND)]
    if allow_fp8 and FP8_BACKEND in dispatch.BACKENDS:
        names.append(FP8_BACKEND)
    names = [b for b in names if dispatch.unavailable_reason(b, device, dtype, bits) is None]
    if not names:
        return None
    namespace = "backend-fp8" if allow_fp8 else "backend"
    key = entry_key(namespace, n, k, bits, dtype, m)
    table = get_table(device)
    hit = table.lookup(key)
    if hit is not None and hit.get("winner") in names:
        return str(hit["winner"])
    if len(names) == 1 or not autotune_enabled():
        return names[0]
    # measure at the bucket's token count so the entry is representative of the whole bucket
    m_probe = max(1, min(m_bucket(m), 32768))
    codes, scales = _synthetic_layer(device, n, k, bits)
    x = torch.randn(m_probe, k, device=device, dtype=dtype)
    states: dict[str, dict[str, Any]] = {b: {} for b in names}

    def runner(b: str) -> Callable[[], Any]:
        return lambda: dispatch.get_backend(b).matmul(x, codes, scales, bits, states[b])

    return table.pick(key, {b: runner(b) for b in names}, device)
