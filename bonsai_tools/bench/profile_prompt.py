"""``python -m bonsai_tools bench-profile``: where the time of a whole text-to-image prompt goes,
through ComfyUI's own executor (one fresh process per path, as ``bench-prompt``).

Per path and resolution, three prompts with new text and noise (so each one encodes its text):

* the first (cold at the first resolution): every node's wall time, with a device sync around
  each node, so loading, moving the model to the GPU and kernel compilation land in the node that
  pays them;
* a warm one, timed the same way: text encode, sampler, VAE decode, save, and the executor's own
  time (prompt wall minus the nodes);
* a warm one under ``torch.profiler``: every GPU kernel is attributed to the node whose (synced)
  time range holds it and sorted by name into packed-linear prep (our unpack / quantize
  launches), GEMM, attention, convolution and the rest; per sampler step, the GPU busy time is
  compared with the step's wall time (the difference is time the GPU waited for the CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STEPS = 4  # the Klein graph of bench-prompt
LOADERS = ("UNETLoader", "BonsaiModelLoader", "CLIPLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader")
NODE_GROUPS = {"CLIPTextEncode": "text_encode", "SamplerCustomAdvanced": "sampler", "VAEDecode": "vae_decode", "SaveImage": "save"}

# kernel name fragments -> category, first match wins (attention before GEMM: flash kernels are CUTLASS too)
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("packed_prep", ("_dequant_kernel", "_prep_kernel", "_act_quant", "_blockwise")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "attn")),
    ("conv", ("conv", "fprop", "dgrad", "implicit", "winograd")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "scaled_mm", "wgmma", "splitk", "sm90_", "sm80_")),
]


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def _install_node_timer(execution: Any, record: list[tuple[str, float, float, float]]) -> None:
    """Wrap the executor's per-node function: (class_type, start, end, seconds) with syncs around."""
    import torch

    orig = execution.execute

    async def timed(server: Any, dynprompt: Any, caches: Any, current_item: Any, *args: Any, **kwargs: Any) -> Any:
        class_type = dynprompt.get_node(current_item)["class_type"]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.profiler.record_function(f"node:{class_type}"):
            out = await orig(server, dynprompt, caches, current_item, *args, **kwargs)
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        record.append((class_type, t0, t1, t1 - t0))
        return out

    execution.execute = timed


def _split(nodes: list[tuple[str, float, float, float]], prompt_s: float) -> dict[str, Any]:
    groups: dict[str, float] = defaultdict(float)
    for ct, _, _, s in nodes:
        groups["load" if ct in LOADERS else NODE_GROUPS.get(ct, "other_nodes")] += s
    out = {k: round(v, 4) for k, v in groups.items()}
    out["executor_overhead"] = round(prompt_s - sum(groups.values()), 4)
    out["prompt"] = round(prompt_s, 4)
    return out


def _kernel_breakdown(prof: Any) -> dict[str, dict[str, float]]:
    """GPU ms per (node group, category) from a profile whose node ranges were synced."""
    ranges = []
    kernels = []
    for e in prof.events():
        if e.name.startswith("node:"):
            ranges.append((e.time_range.start, e.time_range.end, e.name[5:]))
        elif e.device_type.name == "CUDA" and e.time_range.elapsed_us() > 0:
            kernels.append((e.time_range.start, e.time_range.elapsed_us(), e.name))
    ranges.sort()
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for start, us, name in kernels:
        group = "outside_nodes"
        for r0, r1, ct in ranges:
            if r0 <= start <= r1:
                group = "load" if ct in LOADERS else NODE_GROUPS.get(ct, "other_nodes")
                break
        out[group][kernel_category(name)] += us / 1000.0
    return {g: {c: round(v, 3) for c, v in cats.items()} for g, cats in out.items()}


def run_child(args: argparse.Namespace) -> int:
    import torch

    from .prompt_session import TEXT, _boot, _run, build_prompt

    path = args.paths[0]
    nodes, execution, executor = _boot(Path(args.comfyui), Path(args.work).resolve(), [])
    record: list[tuple[str, float, float, float]] = []
    _install_node_timer(execution, record)
    backend = args.compile_backends[0] if args.compile_backends[0] != "none" else None
    rec: dict[str, Any] = {"path": path, "compile_backend": backend, "resolutions": {}}
    try:
        for res in args.resolutions:
            entry: dict[str, Any] = {}
            for label, i in (("first", 0), ("warm", 1), ("profiled", 2)):
                prompt = build_prompt(
                    nodes, path, args.variant, res, 200 + i, f"profile-{path}/{res}-{i}", backend, f"{TEXT}, take {res}-{i}"
                )
                record.clear()
                if label != "profiled":
                    s = _run(execution, executor, prompt)
                    entry[label] = _split(list(record), s)
                    continue
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts) as prof:
                    s = _run(execution, executor, prompt)
                entry["profiled_prompt_s"] = round(s, 4)
                gpu = _kernel_breakdown(prof)
                entry["gpu_ms"] = gpu
                sampler = gpu.get("sampler", {})
                wall_step = entry["warm"].get("sampler", 0.0) / STEPS * 1000.0
                busy = sum(sampler.values()) / STEPS
                entry["step"] = {
                    "wall_ms": round(wall_step, 2),
                    "gpu_busy_ms": round(busy, 2),
                    "gpu_idle_ms": round(wall_step - busy, 2),
                    **{f"{c}_ms": round(v / STEPS, 2) for c, v in sampler.items()},
                }
            rec["resolutions"][str(res)] = entry
            log.info("%s %d: %s", path, res, json.dumps(entry)[:600])
    except Exception as e:  # noqa: BLE001 - reported next to the other paths
        log.exception("%s failed", path)
        rec["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.write(json.dumps(rec) + "\n")
    return 0


def _row(path: str, res: str, e: dict[str, Any]) -> str:
    w, f, st = e["warm"], e["first"], e["step"]
    return (
        f"| {path} | {res}² | {w['prompt']:.3f} | {w.get('text_encode', 0):.3f} | {w.get('sampler', 0):.3f} | "
        f"{st['wall_ms']:.1f} | {st['gpu_busy_ms']:.1f} | {st.get('packed_prep_ms', 0):.1f} | {st.get('gemm_ms', 0):.1f} | "
        f"{st.get('attention_ms', 0):.1f} | {st.get('other_ms', 0):.1f} | {st['gpu_idle_ms']:.1f} | {w.get('vae_decode', 0):.3f} | "
        f"{w.get('save', 0):.3f} | {w['executor_overhead'] + w.get('other_nodes', 0):.3f} | {f['prompt']:.2f} | {f.get('load', 0):.2f} | "
        f"{f.get('sampler', 0):.2f} |"
    )


def to_markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    lines = [
        f"# Where a whole prompt's time goes ({env['gpu']}, {env['date']})",
        "",
        f"torch {env['torch']}, triton {env['triton']}, ComfyUI {env.get('comfyui')}. ComfyUI's executor, 4-step Klein graph, new text",
        "each prompt (so the text encode is inside), device sync around every node. Seconds unless ms; step columns are per",
        "sampler step, GPU kernel time from torch.profiler (prep = Bonsai unpack/quantize launches; idle = step wall − GPU busy).",
        "",
        "| path | res | warm prompt | text enc | sampler | step wall ms | step GPU ms | prep ms | GEMM ms | attn ms | other ms "
        "| GPU idle ms | VAE decode | save | executor+other | first prompt | first: loaders | first: sampler |",
        "|" + "---|" * 18,
    ]
    for r in report["runs"]:
        name = r["path"] + (f"-{r['compile_backend']}" if r.get("compile_backend") else "")
        if r.get("error") and not r.get("resolutions"):
            lines.append(f"| {name} | failed: {r['error'][-200:]!r} |")
        for res, e in r.get("resolutions", {}).items():
            if "step" in e:
                lines.append(_row(name, res, e))
    return "\n".join(lines) + "\n"


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in report["runs"]:
        suffix = {"cudagraphs": "-cudagraphs", "inductor": "-compile"}.get(r.get("compile_backend") or "", "")
        for res, e in r.get("resolutions", {}).items():
            if "step" not in e:
                continue
            rows.append(
                {"path": r["path"] + suffix, "resolution": int(res), "batch": 1, "ms": round(e["warm"]["prompt"] * 1000, 1),
                 "measure": "whole prompt (warm, text encoded, node syncs)", "first_prompt_ms": round(e["first"]["prompt"] * 1000, 1)}
            )  # fmt: skip
            rows.append(
                {"path": r["path"] + suffix, "resolution": int(res), "batch": 1, "ms": e["step"]["wall_ms"],
                 "measure": "step (inside the warm prompt)", "gpu_busy_ms": e["step"]["gpu_busy_ms"]}
            )  # fmt: skip
    return rows


def cmd_bench_profile(args: argparse.Namespace) -> int:
    if args.child:
        return run_child(args)
    import torch

    from . import prompt_files
    from .model_timing import env_info
    from .prompt import _comfy_root
    from .summary import write_summary

    comfy = _comfy_root(args.comfyui)
    sys.path.append(str(comfy))
    work = Path(args.work).resolve()
    prompt_files.prepare(work, args.variant, comfy)
    report: dict[str, Any] = {
        "env": env_info(torch.device("cuda")),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "runs": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for backend in args.compile_backends:
        for path in args.paths:
            cmd = [sys.executable, "-m", "bonsai_tools", "bench-profile", "--child", "--paths", path, "--variant", args.variant,
                   "--work", str(work), "--comfyui", str(comfy), "--compile-backends", backend, "--resolutions", *map(str, args.resolutions)]  # fmt: skip
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
            rec = (
                json.loads(line) if line else {"path": path, "compile_backend": backend, "error": f"rc {r.returncode}: {r.stderr[-3000:]}"}
            )
            report["runs"].append(rec)
            log.info("%s (%s): %s", path, backend, json.dumps(rec)[:400])
            (out / f"{args.name}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    md = to_markdown(report)
    (out / f"{args.name}.md").write_text(md, encoding="utf-8")
    write_summary(out, args.name, report["env"], summary_rows(report))
    sys.stdout.write(md)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-profile", help="where a whole prompt's time goes, per node and per kernel category (GPU)")
    p.add_argument("--paths", nargs="+", default=["stock-bf16", "stock-fp8-fast", "bonsai-auto", "bonsai-auto-fp8"])
    p.add_argument("--variant", default="ternary", choices=["binary", "ternary"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[1024, 512])
    p.add_argument("--compile-backends", nargs="+", default=["none"], choices=["none", "cudagraphs", "inductor"])
    p.add_argument("--work", default=".bench-prompt")
    p.add_argument("--comfyui", default=None)
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--name", default="profile")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_profile)
