"""``python -m bonsai_tools bench-linear``: time every low-bit backend on the Klein linear shapes.

One JSON line per (M, K, N, backend, variant) on stdout: median ms, TFLOP/s, weight bytes the
kernel reads, first-call seconds (compile/autotune) and the error against a float32 matmul
with the exactly dequantized weight. A dense bf16 ``F.linear`` (cuBLAS on CUDA) on the same
dequantized weight is the baseline. A markdown table follows; ``--out PREFIX`` also writes
``PREFIX.json`` (rewritten after every row, so an interrupted run keeps what it measured) and
``PREFIX.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bonsai_core import dispatch
from bonsai_core.atomic import atomic_path
from bonsai_core.dispatch import lowbit_linear, select_backend, unavailable_reason
from bonsai_core.dispatch.cache import device_tag
from bonsai_core.dispatch.tune import klein_linear_shapes, time_samples
from bonsai_core.klein import GROUP_SIZE, KLEIN_4B, diffusers_quantized_linears
from bonsai_core.packing import VARIANT_BITS, PackedWeight, dequantize, pack_codes
from bonsai_image import kernels

log = logging.getLogger(__name__)
dispatch.register_backends(kernels.BACKENDS)  # the runtime never imports kernels: tooling hands them over

DEFAULT_MS = "1,16,256,1536,4608,18432"
DENSE = "dense-bf16"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench-linear", help="time low-bit matmul backends on the Klein linear shapes")
    p.add_argument(
        "--shapes", default="klein", help="'klein' (the 5 diffusers shapes), 'klein-bfl' (the 6 fused ComfyUI shapes) or KxN,KxN,..."
    )
    p.add_argument("--m", default=DEFAULT_MS, help=f"token counts (default {DEFAULT_MS})")
    p.add_argument("--backends", default=None, help="comma list (default: torch,gemlite on CUDA; torch,mlx elsewhere)")
    p.add_argument("--variants", default="binary,ternary")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="activation dtype")
    p.add_argument("--no-baseline", action="store_true", help="skip the dense bf16 baseline")
    p.add_argument("--device", default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=None, help="start no new measurement after this many seconds")
    p.add_argument("--out", default=None, help="write PREFIX.json and PREFIX.md")
    p.set_defaults(func=run)


def _parse_shapes(spec: str) -> list[tuple[int, int]]:
    if spec == "klein":
        return klein_linear_shapes(KLEIN_4B, "diffusers")
    if spec == "klein-bfl":
        return klein_linear_shapes(KLEIN_4B, "bfl")
    shapes = []
    for part in spec.split(","):
        k, _, n = part.lower().partition("x")
        shapes.append((int(k), int(n)))
    return shapes


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int, int], list[float]]:
    def timer(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
        return time_samples(fn, device, warmup=warmup, reps=iters)

    return timer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _weight_bytes(backend: str, k: int, n: int, bits: int) -> int:
    """Bytes of weight data the kernel reads per call."""
    groups = n * (k // GROUP_SIZE)
    if backend == DENSE:
        return k * n * 2
    if backend == "gemlite":  # transposed pack + fp16 scale and zero tables
        return k * n * bits // 8 + 2 * groups * 2
    return k * n * bits // 8 + groups * 2  # canonical codes + fp16 scales


class _Writer:
    def __init__(self, out: str | None, meta: dict[str, Any]) -> None:
        self.out = Path(out) if out else None
        self.meta = meta
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
        if self.out:
            self._write(self.out.with_suffix(".json"), json.dumps({"meta": self.meta, "rows": self.rows}, indent=1) + "\n")

    def finish(self, markdown: str) -> None:
        sys.stdout.write("\n" + markdown)
        if self.out:
            self._write(self.out.with_suffix(".json"), json.dumps({"meta": self.meta, "rows": self.rows}, indent=1) + "\n")
            self._write(self.out.with_suffix(".md"), markdown)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    shapes = _parse_shapes(args.shapes)
    ms = [int(m) for m in args.m.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    backends = [b for b in (args.backends or ("torch,gemlite" if device.type == "cuda" else "torch,mlx")).split(",") if b]
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must really be fp32
    meta = _meta(device, dtype, args)
    meta["complete"] = False  # until the last row is written
    writer = _Writer(args.out, meta)
    timer = _timer(device)
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    skipped: set[str] = set()
    for b in backends:
        for v in variants:
            reason = unavailable_reason(b, device, dtype, VARIANT_BITS[v])
            if reason:
                log.warning("skipping backend %s (%s): %s", b, v, reason)
                skipped.add(f"{b}/{v}")
    # data is generated on the benchmark device: Klein-size activations on CPU take seconds
    gen = torch.Generator(device=device).manual_seed(0)
    stopped = False
    for k, n in shapes:
        xs = {m: torch.randn(m, k, generator=gen, device=device).to(dtype) for m in ms}
        for vi, variant in enumerate(variants):
            bits = VARIANT_BITS[variant]
            q = torch.randint(0, 2 if bits == 1 else 3, (n, k), generator=gen, dtype=torch.uint8, device=device)
            codes = pack_codes(q, bits)
            scales = (torch.rand(n, k // 128, generator=gen, device=device) * 0.02 + 0.002).half()
            del q
            w32 = dequantize(codes, scales, bits, torch.float32)
            w_dense = w32.to(torch.bfloat16) if not args.no_baseline and vi == 0 else None
            states: dict[str, dict[str, Any]] = {b: {} for b in backends}
            for m in ms:
                if deadline is not None and time.monotonic() > deadline:
                    stopped = True
                    break
                x = xs[m]
                ref = x.float() @ w32.T
                auto = select_backend(device, dtype, bits, m, k=k, n=n)
                runs: list[tuple[str, Callable[[], torch.Tensor]]] = []
                if w_dense is not None:
                    runs.append((DENSE, functools.partial(torch.nn.functional.linear, x.to(torch.bfloat16), w_dense)))
                for b in backends:
                    if f"{b}/{variant}" in skipped:
                        continue
                    # through lowbit_linear (validation, M=0) with the backend forced; availability
                    # was checked above, so no silent fallback can mislabel a row
                    runs.append((b, functools.partial(lowbit_linear, x, PackedWeight(codes, scales, bits), backend=b, state=states[b])))
                for name, fn in runs:
                    t0 = time.perf_counter()
                    y = fn()
                    _sync(device)
                    first = time.perf_counter() - t0
                    err = (y.float() - ref).abs().max().item() if y.numel() else 0.0
                    scale = (ref.abs().max().item() if ref.numel() else 0.0) or 1.0
                    times = timer(fn, args.warmup, args.iters)
                    ms_med = statistics.median(times)
                    writer.add(
                        {
                            "m": m,
                            "k": k,
                            "n": n,
                            "backend": name,
                            "variant": "dense" if name == DENSE else variant,
                            "dtype": args.dtype,
                            "ms": round(ms_med, 4),
                            "ms_min": round(min(times), 4),
                            "tflops": round(2 * m * k * n / (ms_med * 1e-3) / 1e12, 2) if ms_med > 0 else 0.0,
                            "weight_bytes": _weight_bytes(name, k, n, bits),
                            "max_abs_err": err,
                            "max_rel_err": err / scale,
                            "first_call_s": round(first, 3),
                            "auto": auto if name != DENSE else None,
                        }
                    )
                    del y
                del ref
            del codes, scales, w32, w_dense, states
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if stopped:
                break
        del xs
        if stopped:
            log.warning("--budget-s reached: stopped early; rows so far are kept")
            break
    meta["complete"] = not stopped
    writer.finish(markdown(writer.rows, meta))
    return 0


def _meta(device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "device_tag": device_tag(device),
        "torch": torch.__version__,
        "triton": ver("triton"),
        "gemlite": ver("gemlite"),
        "mlx": ver("mlx"),
        "dtype": str(dtype).removeprefix("torch."),
        "timing": f"median of {args.iters} calls after {args.warmup} warm-up calls"
        + (", CUDA events" if device.type == "cuda" else ", host clock"),
        "reference": "float32 matmul (TF32 off) of the same activations with the exactly dequantized weight",
        "command": "python -m bonsai_tools " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else None,
    }
    return meta


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Per (K×N, M): ms of every backend/variant, the dense baseline and the dispatcher's pick."""
    cols: list[tuple[str, str]] = []
    for r in rows:
        c = (r["backend"], r["variant"])
        if c not in cols:
            cols.append(c)
    cols.sort(key=lambda c: (c[0] != DENSE, c[0], c[1]))
    table: dict[tuple[int, int, int], dict[tuple[str, str], dict[str, Any]]] = {}
    for r in rows:
        table.setdefault((r["k"], r["n"], r["m"]), {})[(r["backend"], r["variant"])] = r
    head = ["K×N", "M"] + [f"{b} {v}" if b != DENSE else "dense bf16" for b, v in cols] + ["auto picks (binary / ternary)"]
    lines = [
        f"# bench-linear: {meta.get('device')} ({meta.get('date')})",
        "",
        f"torch {meta.get('torch')}, triton {meta.get('triton')}, gemlite {meta.get('gemlite')}, mlx {meta.get('mlx')}; "
        f"activations {meta.get('dtype')}; {meta.get('timing')}. Cells: ms (TFLOP/s). "
        f"Errors are max |y - ref| / max |ref| against a {meta.get('reference')}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for (k, n, m), cells in table.items():
        vals = []
        for c in cols:
            r = cells.get(c)
            vals.append(f"{r['ms']:.3f} ({r['tflops']:.0f})" if r else "–")
        picks = {r["variant"]: r["auto"] for r in cells.values() if r.get("auto")}
        vals.append(" / ".join(picks.get(v, "–") for v in ("binary", "ternary")))
        lines.append(f"| {k}×{n} | {m} | " + " | ".join(vals) + " |")
    lines += ["", "Max relative error per backend/variant (worst over all shapes and M):", ""]
    lines += ["| backend | variant | max rel err | max abs err |", "|---|---|---|---|"]
    for c in cols:
        rs = [r for r in rows if (r["backend"], r["variant"]) == c]
        lines.append(f"| {c[0]} | {c[1]} | {max(r['max_rel_err'] for r in rs):.3g} | {max(r['max_abs_err'] for r in rs):.3g} |")
    lines += _per_step(rows, cols)
    if not meta.get("complete", True):
        lines += ["", "**Incomplete run**: stopped at the time budget; missing cells were not measured."]
    return "\n".join(lines) + "\n"


def _per_step(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    """Sum over the 100 quantized Klein 4B linears (diffusers shapes x their counts) per M."""
    counts: dict[tuple[int, int], int] = {}
    for n, k in diffusers_quantized_linears(KLEIN_4B).values():
        counts[(k, n)] = counts.get((k, n), 0) + 1
    out = ["", "Per transformer step (sum over the 100 quantized Klein 4B linears, diffusers shapes), ms:", ""]
    out += ["| M | " + " | ".join(f"{b} {v}" if b != DENSE else "dense bf16" for b, v in cols) + " |", "|---|" + "---|" * len(cols)]
    any_row = False
    for m in sorted({r["m"] for r in rows}):
        vals = []
        for c in cols:
            got = {(r["k"], r["n"]): r["ms"] for r in rows if r["m"] == m and (r["backend"], r["variant"]) == c}
            vals.append(f"{sum(got[s] * cnt for s, cnt in counts.items()):.2f}" if all(s in got for s in counts) else "–")
        if any(v != "–" for v in vals):
            any_row = True
            out.append(f"| {m} | " + " | ".join(vals) + " |")
    return out if any_row else []
