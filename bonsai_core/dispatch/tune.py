"""Measuring which backend (and backend variant) is fastest on this GPU: an explicit command only.

A user's prompt never waits for this: selection reads the tables and the static rules
(:mod:`.rules`). :func:`tune_device` is what ``bonsai.py tune`` runs (once per GPU
model, a minute or two for the Klein shapes); its results go to ``dispatch.json`` in the per-GPU
cache folder, where every later process reads them. :func:`prewarm` only compiles kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..escape import escaping_logger
from ..klein import GROUP_SIZE, KLEIN_4B, KleinConfig, bfl_quantized_layers, diffusers_quantized_linears
from ..packing import MAX_CODE, PackedWeight, pack_codes
from . import registry, rules
from .table import entry_key, get_table, m_bucket

log = escaping_logger("bonsai_core.dispatch")

# Token counts ComfyUI runs for Klein: 512^2 (1024 image + text tokens) and 1024^2 (4096 + text), batch 1
DEFAULT_TUNE_M = (1536, 4608)
DEFAULT_PREWARM_M = (1, 16, 256, 1536, 4608)
MAX_PROBE_M = 32768


def klein_linear_shapes(cfg: KleinConfig = KLEIN_4B, naming: str = "diffusers") -> list[tuple[int, int]]:
    """Distinct ``(K, N)`` = (in_features, out_features) of the quantized linears.

    ``diffusers`` gives the five shapes of the released packs (separate q/k/v);
    ``bfl`` the six that ComfyUI runs (fused qkv, fused single-block linear1).
    """
    if naming == "diffusers":
        shapes = [(k, n) for n, k in diffusers_quantized_linears(cfg).values()]
    elif naming == "bfl":
        fused = diffusers_quantized_linears(cfg)
        shapes = []
        for parts in bfl_quantized_layers(cfg).values():
            n = sum(fused[p][0] for p in parts)
            shapes.append((fused[parts[0]][1], n))
    else:
        raise ValueError(f"naming must be 'diffusers' or 'bfl', got {naming!r}")
    return list(dict.fromkeys(shapes))


def time_samples(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, reps: int = 3) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn()`` after ``warmup`` calls; CUDA events on GPU,
    a host clock elsewhere. The warm-up absorbs JIT compilation and backend first-use work."""
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
    return times


def time_candidate(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, reps: int = 3) -> float:
    """Median milliseconds of ``fn()`` (see :func:`time_samples`)."""
    return statistics.median(time_samples(fn, device, warmup=warmup, reps=reps))


def measure_and_record(key: str, candidates: Mapping[str, Callable[[], Any]], device: torch.device, *, reps: int = 3) -> str:
    """Time every candidate, remember the fastest under ``key`` in ``device``'s table, return it.
    A candidate that raises is skipped and logged."""
    ms: dict[str, float] = {}
    t0 = time.perf_counter()
    for name, fn in candidates.items():
        try:
            ms[name] = time_candidate(fn, device, reps=reps)
        except Exception as e:  # noqa: BLE001 - any failure just disqualifies the candidate
            log.warning("tune %s: candidate %s failed (%s: %s); skipping it", key, name, type(e).__name__, e)
    if not ms:
        raise RuntimeError(f"tune {key}: every candidate failed ({', '.join(candidates)})")
    winner = min(ms, key=ms.__getitem__)
    log.info("tune %s -> %s (%s; %.1f s)", key, winner, ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), time.perf_counter() - t0)
    get_table(device).record(key, winner, ms)
    return winner


def synthetic_weight(device: torch.device, n: int, k: int, bits: int, *, seed: int = 0) -> PackedWeight:
    """Random valid codes and scales: speed does not depend on the values, but all-zero data
    can run faster than real data, so the codes are random."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randint(0, MAX_CODE[bits] + 1, (n, k), dtype=torch.uint8, generator=gen)
    scales = (torch.rand(n, k // GROUP_SIZE, generator=gen) * 0.02 + 1e-4).half()
    return PackedWeight(pack_codes(q, bits).to(device), scales.to(device), bits)


def _runners(names: Sequence[str], x: torch.Tensor, weight: PackedWeight) -> dict[str, Callable[[], Any]]:
    """One zero-argument call per backend, each with its own layer state (prepared weights)."""
    states: dict[str, dict[str, Any]] = {name: {} for name in names}
    return {name: (lambda name=name: registry.get_backend(name).matmul(x, weight, states[name])) for name in names}


def tune_device(
    device: torch.device | str | None = None,
    shapes: Iterable[tuple[int, int]] | None = None,
    *,
    bits: Sequence[int] = (1, 2),
    ms: Sequence[int] = DEFAULT_TUNE_M,
    dtype: torch.dtype = torch.bfloat16,
    include_fp8: bool = True,
    budget_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure backend choices for ``shapes`` (default: the Klein shapes ComfyUI runs) x ``bits``
    x token buckets of ``ms`` on ``device`` and store them in its ``dispatch.json``.

    Backend-internal choices met on the way (dequant tile, FP8 GEMM variant) are measured too.
    ``budget_s`` stops after that many seconds (what was measured so far is kept). Returns one
    record per measured entry: key, winner and milliseconds of every candidate.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape_list = list(shapes) if shapes is not None else klein_linear_shapes(KLEIN_4B, "bfl")
    buckets = sorted({m_bucket(m) for m in ms})
    plan = [(k, n, b, m) for k, n in shape_list for b in bits for m in buckets]
    table = get_table(dev)
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with registry.measuring(measure_and_record):
        for i, (k, n, b, m) in enumerate(plan):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                log.warning(
                    "tune: budget of %.0f s spent after %d of %d configurations; the rest keep the static rules", budget_s, i, len(plan)
                )
                break
            weight = synthetic_weight(dev, n, k, b, seed=i)
            x = torch.randn(min(m, MAX_PROBE_M), k, device=dev, dtype=dtype)
            for allow_fp8 in (False, True) if include_fp8 else (False,):
                names = rules.table_candidates(dev, dtype, b, allow_fp8)
                if allow_fp8 and all(registry.is_exact(name) for name in names):
                    continue  # no FP8 backend can run here: the exact table already covers it
                if len(names) < 2:
                    continue
                key = entry_key(rules.table_namespace(allow_fp8), n, k, b, dtype, m)
                winner = measure_and_record(key, _runners(names, x, weight), dev)
                hit = table.lookup(key)
                records.append({"key": key, "winner": winner, "ms": hit["ms"] if hit else {}})
            if progress is not None:
                progress(i + 1, len(plan))
    rules.reload_tables()  # later selections read the new entries
    log.info("tuned %d backend choices on %s in %.1f s (%s)", len(records), dev, time.perf_counter() - t0, table.path)
    return records


def prewarm(
    shapes: Iterable[tuple[int, int]] | None = None,
    backend: str = rules.AUTO,
    *,
    bits: Sequence[int] = (1, 2),
    ms: Sequence[int] = DEFAULT_PREWARM_M,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> list[dict[str, Any]]:
    """Compile (and let gemlite autotune) the low-bit kernels for ``shapes`` x ``bits`` x ``ms``
    now, so the first image does not pay for it; compiled kernels land in the per-GPU cache.
    Measures nothing. Returns one record per call with the backend used and the seconds it took."""
    from .run import lowbit_linear

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape_list = list(shapes) if shapes is not None else klein_linear_shapes(KLEIN_4B, "bfl")
    records: list[dict[str, Any]] = []
    for i, (k, n) in enumerate(shape_list):
        for b in bits:
            weight = synthetic_weight(dev, n, k, b, seed=i)
            state: dict[str, Any] = {}
            for m in ms:
                name = rules.select_backend(dev, dtype, b, m, backend, k=k, n=n)
                x = torch.zeros(m, k, dtype=dtype, device=dev)
                t0 = time.perf_counter()
                lowbit_linear(x, weight, backend=name, state=state)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                dt = time.perf_counter() - t0
                records.append({"k": k, "n": n, "bits": b, "m": m, "backend": name, "seconds": round(dt, 3)})
                log.debug("prewarm %dx%d bits=%d M=%d on %s: %.2f s", k, n, b, m, name, dt)
            del weight, state
    log.info("prewarmed %d low-bit kernel configurations", len(records))
    return records
