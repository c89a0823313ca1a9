"""``python -m bonsai_tools bench-prompt``: whole text-to-image prompts through ComfyUI's own
executor, stock Klein (bf16, ``fp8_e4m3fn_fast``, ``comfy_quant`` FP8) against Bonsai, as a user
runs them: one fresh process per path (ComfyUI started the way ``main.py`` starts it, on the GPU,
default memory management unless ``--reserve-vram`` is given), the prompt validated and executed
by ``execution.PromptExecutor``.

Per path and resolution: the first prompt (cold at the first resolution: loading the models from
disk, text encoding, sampling, VAE decode), then ``--warm`` more with new noise seeds (the
executor's cache keeps the loaders and the encoded text, so a warm prompt is sampling + decode).
Reported: wall seconds per prompt, peak VRAM (torch's allocator, plus the device's used memory
after the run), and the cosine of the final latents (``SaveLatent``) against stock bf16.
The text encoder of each path is also timed on its own (load, first and second encode).

Files: :mod:`.prompt_files` (full-size synthetic, one seed for every form of the weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .prompt_session import PATHS, run_child

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def _comfy_root(arg: str | None) -> Path:
    for c in (arg, os.environ.get("COMFYUI_PATH"), str(Path.home() / "comfy" / "ComfyUI")):
        if c and (Path(c) / "comfy" / "sd.py").is_file():
            return Path(c)
    raise SystemExit("ComfyUI not found: pass --comfyui PATH or set COMFYUI_PATH")


def _latent(path: Path) -> Any:
    import safetensors.torch

    return safetensors.torch.load_file(str(path))["latent_tensor"].float()


def _cosine(a: Any, b: Any) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def cmd_bench_prompt(args: argparse.Namespace) -> int:
    if args.child:
        return run_child(args)
    import torch

    from . import prompt_files
    from .model_timing import env_info

    comfy = _comfy_root(args.comfyui)
    sys.path.append(str(comfy))  # comfyui_version, for the report header
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prompt_files.prepare(work, args.variant, comfy)
    log.info("model files ready in %.0f s", time.perf_counter() - t0)
    env = env_info(torch.device("cuda"))
    report: dict[str, Any] = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "func"}, "runs": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for reserve in args.reserve_vram or [None]:
        for path in args.paths:
            cmd = [sys.executable, "-m", "bonsai_tools", "bench-prompt", "--child", "--paths", path, "--variant", args.variant,
                   "--work", str(work), "--comfyui", str(comfy), "--resolutions", *map(str, args.resolutions), "--warm", str(args.warm)]  # fmt: skip
            if reserve is not None:
                cmd += ["--reserve-vram", str(reserve)]
            if args.compile:
                cmd += ["--compile", "--compile-backend", args.compile_backend]
            if args.vary_text:
                cmd += ["--vary-text"]
            t1 = time.perf_counter()
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
            rec: dict[str, Any] = json.loads(line) if line else {"path": path, "error": f"rc {r.returncode}: {r.stderr[-3000:]}"}
            rec["process_wall_s"] = round(time.perf_counter() - t1, 1)
            rec["reserve_vram_gb"] = reserve
            report["runs"].append(rec)
            log.info("%s reserve=%s: %s", path, reserve, json.dumps(rec)[:800])
            _compare(report)
            (out / f"{args.name}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    md = to_markdown(report)
    (out / f"{args.name}.md").write_text(md, encoding="utf-8")
    from .summary import write_summary

    write_summary(out, args.name, env, summary_rows(report))
    sys.stdout.write(md + "\n")
    return 0


def reference_path(path: str) -> str:
    """The run a path's final latents are compared with: the exact run with the same text encoder
    (Bonsai paths share the 4-bit one; stock paths are compared with stock bf16, so the FP8 ones
    also carry their FP8 text encoder's error)."""
    return "bonsai-auto" if path.startswith("bonsai-") else "stock-bf16"


def _compare(report: dict[str, Any]) -> None:
    """Cosine of each run's final latents against its reference run under the same memory limit."""
    refs = {
        (r.get("path"), r.get("reserve_vram_gb"), r.get("compile", False), res): p
        for r in report["runs"]
        for res, p in r.get("latents", {}).items()
    }
    for r in report["runs"]:
        ref_path = reference_path(r.get("path", ""))
        r["cosine_reference"] = ref_path
        for res, p in r.get("latents", {}).items():
            ref = refs.get((ref_path, r.get("reserve_vram_gb"), False, res)) or refs.get(
                (ref_path, r.get("reserve_vram_gb"), r.get("compile", False), res)
            )
            if ref and Path(ref).is_file() and Path(p).is_file():
                r.setdefault("cosine_vs_reference", {})[res] = round(_cosine(_latent(Path(p)), _latent(Path(ref))), 6)


def _compiled_suffix(r: dict[str, Any]) -> str:
    if not r.get("compile"):
        return ""
    return "-cudagraphs" if r.get("compile_backend") == "cudagraphs" else "-compile"


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    base = {
        (r.get("reserve_vram_gb"), res): v["warm_s"]
        for r in report["runs"]
        if r.get("path") == "stock-bf16" and not r.get("compile")
        for res, v in r.get("prompts", {}).items()
    }
    for r in report["runs"]:
        for res, v in r.get("prompts", {}).items():
            ref = base.get((r.get("reserve_vram_gb"), res))
            limit = r.get("reserve_vram_gb")
            rows.append(
                {
                    "path": r["path"] + _compiled_suffix(r),
                    "resolution": int(res),
                    "batch": 1,
                    "ms": round(v["warm_s"] * 1000, 1),
                    "ratio_vs_bf16": round(v["warm_s"] / ref, 3) if ref else None,
                    "first_prompt_ms": round(v["first_s"] * 1000, 1),
                    "peak_vram_gb": v.get("peak_allocated_gb"),
                    "cosine_vs_reference": r.get("cosine_vs_reference", {}).get(res),
                    "cosine_reference": r.get("cosine_reference"),
                    "measure": "whole prompt (warm"
                    + (", text encoded each prompt)" if r.get("text_each_prompt") else ", cached text)")
                    + (f", reserve-vram {limit} GB" if limit is not None else ""),
                }
            )
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    a = report["args"]
    lines = [
        f"# Whole text-to-image prompt through ComfyUI's executor ({env['gpu']})",
        "",
        f"{env['date']}; torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, ComfyUI {env.get('comfyui')}, Python {env['python']}.",
        f"{a['variant']} weights (full-size synthetic, one seed for every path); 4-step Klein graph (CFGGuider cfg 1, Flux2Scheduler, euler,",
        "SamplerCustomAdvanced), VAE decode + SaveImage + SaveLatent; one fresh process per path. First = the first prompt at that",
        f"resolution in the process (the very first loads every model from disk); warm = median of {a['warm']} more with new noise seeds.",
        "",
        "| path | reserve-vram GB | res | first s | warm s | × bf16 (warm) | peak alloc GB | used after GB | TE load s | TE encode s (1st / 2nd) | cosine (vs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {
        (r.get("reserve_vram_gb"), res): v["warm_s"]
        for r in report["runs"]
        if r.get("path") == "stock-bf16" and not r.get("compile")
        for res, v in r.get("prompts", {}).items()
    }
    for r in report["runs"]:
        if "error" in r and not r.get("prompts"):
            lines.append(f"| {r.get('path')} | {r.get('reserve_vram_gb')} | failed: {str(r['error'])[-300:]!r} |")
            continue
        te = r.get("te", {})
        for res, v in r.get("prompts", {}).items():
            ref = base.get((r.get("reserve_vram_gb"), res))
            ratio = f"{v['warm_s'] / ref:.2f}×" if ref else "–"
            lines.append(
                f"| {r['path']}{_compiled_suffix(r)} | {r.get('reserve_vram_gb') or '–'} | {res}² | {v['first_s']:.2f} | {v['warm_s']:.3f} | {ratio} | "
                f"{v.get('peak_allocated_gb', '–')} | {v.get('used_after_gb', '–')} | {te.get('load_s', '–')} | "
                f"{te.get('first_encode_s', '–')} / {te.get('second_encode_s', '–')} | {r.get('cosine_vs_reference', {}).get(res, '–')} ({r.get('cosine_reference')}) |"
            )
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-prompt", help="whole text-to-image prompts through ComfyUI's executor: stock vs Bonsai (GPU)")
    p.add_argument("--paths", nargs="+", default=list(PATHS))
    p.add_argument("--variant", default="ternary", choices=["binary", "ternary"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[1024, 512])
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--reserve-vram", nargs="*", type=float, default=None, help="GB kept free (simulates a smaller card); one run per value")
    p.add_argument("--compile", action="store_true", help="put ComfyUI's TorchCompileModel node after the model loader")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "cudagraphs"], help="TorchCompileModel's backend input")
    p.add_argument("--vary-text", action="store_true", help="new prompt text each prompt: warm prompts include the text encode")
    p.add_argument("--work", default=".bench-prompt", help="folder for the synthetic model files (kept between runs)")
    p.add_argument("--comfyui", default=None)
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--name", default="prompt")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_prompt)
