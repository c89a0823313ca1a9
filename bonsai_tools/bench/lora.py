"""``python -m bonsai_tools bench-lora``: per-step cost of LoRAs on a Bonsai FLUX.2 Klein model.

The model is ComfyUI's own FLUX.2 transformer built with the pack's ``BonsaiOps`` on full-size
synthetic packed weights (``bench_model.synthetic_state_dict``); LoRAs of rank 16/64/128 on every
packed linear (:mod:`bonsai_tools.synth.lora`, BFL keys) go through ComfyUI's stock path
(``comfy.sd.load_lora_for_models``, what ``LoraLoader`` calls) and ComfyUI's model management
(``load_models_gpu``), so the timed forward is exactly what a workflow runs: packed matmul + the
unmerged branches of ``nodes/lora.py``.

Reports (JSON on stdout's last line, a markdown table before it, both also under ``--out``):
per-step median of ``diffusion_model(x, t, context)`` without LoRA and with each rank, the overhead
in ms and %, the LoRA's resident bytes, the time ComfyUI takes to (re)load a LoRA'd clone (branch
construction + transfer), peak VRAM, and a sanity check that the LoRA changes the output while
removing it restores the base output bit for bit.

``--size tiny`` runs on CPU in seconds (a smoke test of the script itself, not a measurement).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..pack_import import PACK_PACKAGE
from .model import setup_comfy, synthetic_state_dict
from .model_timing import env_info

log = logging.getLogger(__name__)

PKG = PACK_PACKAGE  # the bare package bonsai_tools.pack_import registers over the repository


def _timer(device: Any) -> tuple[Any, Any]:
    """(start, stop) -> elapsed ms; CUDA events on a GPU, perf_counter on CPU."""
    import torch

    if device.type == "cuda":

        def start() -> Any:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev

        def stop(ev: Any) -> float:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return float(ev.elapsed_time(end))

        return start, stop
    return time.perf_counter, lambda t0: (time.perf_counter() - t0) * 1000.0


def make_inputs(cfg: Any, batch: int, res: int, txt_tokens: int, device: Any, dtype: Any) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, res // 16, res // 16, device=device, generator=g).to(dtype)
    ctx = torch.randn(batch, txt_tokens, cfg.context_in_dim, device=device, generator=g).to(dtype)
    t = torch.full((batch,), 0.7, device=device, dtype=dtype)
    return x, t, ctx


def time_forward(dm: Any, inputs: tuple[Any, Any, Any], device: Any, warmup: int, reps: int) -> dict[str, float]:
    import torch

    start, stop = _timer(device)
    with torch.inference_mode():
        for _ in range(warmup):
            dm(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(reps):
            t0 = start()
            dm(*inputs)
            times.append(stop(t0))
    out = {"ms_median": statistics.median(times), "ms_min": min(times)}
    if device.type == "cuda":
        out["peak_vram_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def synthetic_lora(cfg: Any, rank: int, seed: int) -> dict[str, Any]:
    """The rank-``rank`` LoRA of :mod:`bonsai_tools.synth.lora`, in memory (bf16, CPU, like a loaded file)."""
    from ..synth.lora import lora_specs

    return {s.name: s.produce() for s in lora_specs(cfg, rank, seed)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    ops_mod = setup_comfy(args.comfyui)
    lora_mod = importlib.import_module(f"{PKG}.nodes.lora")
    klein = importlib.import_module(f"{PKG}.bonsai_core.klein")
    import comfy.model_management as mm
    import comfy.sd

    cuda = torch.cuda.is_available() and args.size == "full"
    device = torch.device("cuda") if cuda else torch.device("cpu")
    cfg = klein.KLEIN_4B if args.size == "full" else klein.KLEIN_TINY
    dtype = torch.bfloat16 if cuda else torch.float32
    bits = {"binary": 1, "ternary": 2}[args.variant]
    sd = synthetic_state_dict(bits, device, cfg=cfg)
    ops = ops_mod.make_bonsai_ops(args.backend, bits)
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops, "dtype": dtype})
    del sd
    lora_mod.install_lora_support(patcher)  # what BonsaiModelLoader does
    report: dict[str, Any] = {
        "bench": "bench-lora",
        "env": env_info(device) if cuda else {"device": "cpu", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "patcher": type(patcher).__name__,
        "rows": [],
    }
    inputs = make_inputs(cfg, args.batch, args.resolution, args.txt_tokens, device, dtype)

    def step(p: Any) -> tuple[dict[str, float], Any, float]:
        t0 = time.perf_counter()
        mm.load_models_gpu([p])
        if cuda:
            torch.cuda.synchronize(device)
        load_s = time.perf_counter() - t0
        dm = p.model.diffusion_model
        timing = time_forward(dm, inputs, device, args.warmup, args.reps)
        with torch.inference_mode():
            y = dm(*inputs).float()
        return timing, y, load_s

    base, y_base, load_s = step(patcher)
    report["base"] = {**base, "load_s": round(load_s, 3)}
    log.info("no LoRA: %.2f ms/step", base["ms_median"])
    for rank in args.ranks:
        lora = synthetic_lora(cfg, rank, seed=rank)
        file_bytes = sum(t.numel() * t.element_size() for t in lora.values())
        lp, _ = comfy.sd.load_lora_for_models(patcher, None, lora, args.strength, 0.0)
        timing, y, load_s = step(lp)
        resident = lora_mod.lora_nbytes(lp.model)
        rel = float((y - y_base).norm() / y_base.norm())
        row = {
            "rank": rank,
            **timing,
            "lora_file_bytes": file_bytes,
            "lora_resident_bytes": resident,
            "attach_load_s": round(load_s, 3),
            "output_rel_change": rel,
            "finite": bool(torch.isfinite(y).all()),
        }
        report["rows"].append(row)
        log.info("rank %d: %.2f ms/step", rank, timing["ms_median"])
        del lp, lora
    # removing the LoRA (the plain MODEL again) must give the base output back exactly; its timing,
    # taken after the LoRA runs, guards the overheads against warm-up drift
    again, y_again, _ = step(patcher)
    report["base_after"] = again
    report["removal_restores_base_exactly"] = bool(torch.equal(y_again, y_base))
    ref = min(base["ms_median"], again["ms_median"])
    for row in report["rows"]:
        row["overhead_ms"] = row["ms_median"] - ref
        row["overhead_pct"] = 100.0 * (row["ms_median"] / ref - 1.0)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    a = report["args"]
    env = report["env"]
    head = (
        f"LoRA per-step overhead, {a['variant']} {a['size']}, backend {a['backend']}, {a['resolution']}x{a['resolution']} "
        f"batch {a['batch']}, {a['txt_tokens']} text tokens, {env.get('gpu', env.get('device'))}, {env.get('date')}\n\n"
        "| LoRA rank | ms/step (median) | overhead ms | overhead % | LoRA resident MiB | (re)load s | peak VRAM GiB |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    b, b2 = report["base"], report["base_after"]
    gib = 2**30
    rows = [
        f"| none | {b['ms_median']:.2f} (after: {b2['ms_median']:.2f}) | - | - | 0 | {b['load_s']:.2f} | {b.get('peak_vram_bytes', 0) / gib:.2f} |"
    ]
    for r in report["rows"]:
        rows.append(
            f"| {r['rank']} | {r['ms_median']:.2f} | {r['overhead_ms']:+.2f} | {r['overhead_pct']:+.1f} | "
            f"{r['lora_resident_bytes'] / 2**20:.1f} | {r['attach_load_s']:.2f} | {r.get('peak_vram_bytes', 0) / gib:.2f} |"
        )
    tail = f"\n\nremoving the LoRA restores the base output exactly: {report['removal_restores_base_exactly']}"
    return head + "\n".join(rows) + tail


def cmd_bench_lora(args: argparse.Namespace) -> int:
    report = run(args)
    md = to_markdown(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (out / f"{args.name}.md").write_text(md + "\n", encoding="utf-8")
    sys.stdout.write(md + "\n")
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-lora", help="per-step overhead of unmerged LoRAs (rank 16/64/128) on a Bonsai model (GPU)")
    p.add_argument("--variant", default="ternary", choices=["binary", "ternary"])
    p.add_argument("--backend", default="auto", help="Bonsai backend of the packed layers (auto, torch, gemlite, triton_dequant, fp8, ...)")
    p.add_argument("--size", default="full", choices=["full", "tiny"], help="full = Klein 4B shapes (GPU); tiny = CPU smoke test")
    p.add_argument("--ranks", nargs="+", type=int, default=[16, 64, 128])
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--txt-tokens", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH or ~/comfy/ComfyUI)")
    p.add_argument("--out", default=None, help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default="bench-lora")
    p.set_defaults(func=cmd_bench_lora)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bonsai_tools.bench.lora")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["bench-lora", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
