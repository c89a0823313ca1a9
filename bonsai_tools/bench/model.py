"""``python -m bonsai_tools bench-model``: ComfyUI's own FLUX.2 Klein 4B transformer, stock bf16
against the same model with Bonsai ops per backend, on full-size synthetic weights.

Why synthetic: speed does not depend on the values, the released files are gigabytes, and the
GPU machine cannot download. The weights are random canonical codes + g128 scales of the
``KLEIN_4B`` shapes, generated on the GPU; the bf16 baseline gets *their dequantization* as
dense weights, so the two models compute the same function and the final latents of a short
Euler loop can be compared (cosine).

What it reports (JSON + markdown under ``--out``): per-step time of ``diffusion_model(x, t,
context)`` (CUDA events, warm-up, median) at each resolution x batch, peak VRAM, resident
transformer bytes (parameters + buffers) plus the shared scratch, the cosine of the final
latents after ``--euler-steps`` steps vs bf16, the backends the measured table chose, and (with
``--cold``) the first-image time of fresh processes with empty and with persisted caches.

ComfyUI is imported from ``--comfyui`` / ``$COMFYUI_PATH`` / ``~/comfy/ComfyUI``; this repository
is imported as a custom-node package (``bonsai_image``) exactly as ComfyUI does, so the real
``nodes/ops.py`` ``BonsaiOps`` is what runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

from bonsai_core.klein import GROUP_SIZE

from ..pack_import import PACK_PACKAGE, isolate_pack
from .model_timing import cosine, env_info, euler_latents, time_step
from .summary import step_rows, write_summary

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PKG = PACK_PACKAGE
DEFAULT_BACKENDS = ("auto", "fp8", "fp8_rowwise", "fp8_rowwise_resident")


# ---------------------------------------------------------------------------
# environment: ComfyUI + this repo as its custom-node package
# ---------------------------------------------------------------------------


def setup_comfy(comfy_path: str | None) -> types.ModuleType:
    """Import ComfyUI's modules and this repo's ``nodes.ops`` the way ComfyUI would."""
    candidates = [comfy_path, os.environ.get("COMFYUI_PATH"), str(Path.home() / "comfy" / "ComfyUI")]
    root = next((Path(c) for c in candidates if c and (Path(c) / "comfy" / "sd.py").is_file()), None)
    if root is None:
        raise SystemExit("ComfyUI not found: pass --comfyui PATH or set COMFYUI_PATH")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)  # ComfyUI must not parse our argv
    import torch
    from comfy.cli_args import args as comfy_args

    if not torch.cuda.is_available():
        comfy_args.cpu = True  # CPU smoke tests: model_management must not probe CUDA
    # a bare package over the repo (bonsai_tools.pack_import): the pack's root __init__ (node registration,
    # comfy_api) is not needed to build a model, only nodes/ops.py and bonsai_core
    isolate_pack()
    return importlib.import_module(f"{PKG}.nodes.ops")


def core(name: str) -> types.ModuleType:
    """A module of the ``bonsai_core`` copy that the ops use (``bonsai_image.bonsai_core.*``)."""
    return importlib.import_module(f"{PKG}.bonsai_core.{name}")


# ---------------------------------------------------------------------------
# synthetic full-size checkpoint (canonical BFL keys), generated on the GPU
# ---------------------------------------------------------------------------


def synthetic_state_dict(bits: int, device: Any, seed: int = 0, cfg: Any = None) -> dict[str, Any]:
    import torch

    klein = core("klein")
    cfg = cfg or klein.KLEIN_4B
    g = torch.Generator(device=device).manual_seed(seed + bits)
    diff_q = klein.diffusers_quantized_linears(cfg)
    sd: dict[str, Any] = {}
    for key, parts in klein.bfl_quantized_layers(cfg).items():
        n = sum(diff_q[p][0] for p in parts)
        k = diff_q[parts[0]][1]
        if bits == 1:
            codes = torch.randint(0, 256, (n, k // 8), dtype=torch.uint8, device=device, generator=g)
        else:
            q = torch.randint(0, 3, (n, k), dtype=torch.uint8, device=device, generator=g)
            codes = core("packing").pack_codes(q, 2)
        # |W| ~ 1/sqrt(K) keeps activations O(1) through the 25 blocks
        scales = ((torch.rand(n, k // GROUP_SIZE, device=device, generator=g) + 0.5) / (k**0.5)).half()
        sd[key] = codes
        sd[key[: -len("weight")] + "weight_scale"] = scales
    dense_shapes = klein.diffusers_dense_tensors(cfg)
    for bfl, diff in klein.bfl_dense_tensors(cfg).items():
        shape = dense_shapes[diff]
        if len(shape) == 1:  # QK-norm scales
            sd[bfl] = torch.ones(shape, dtype=torch.bfloat16, device=device)
        else:
            sd[bfl] = (torch.randn(shape, device=device, generator=g) / (shape[1] ** 0.5)).to(torch.bfloat16)
    return sd


def dense_state_dict(packed: dict[str, Any]) -> dict[str, Any]:
    """The bf16 baseline: every packed layer replaced by its exact bf16 dequantization."""
    import torch

    deq = core("packing").dequantize
    out: dict[str, Any] = {}
    for key, t in packed.items():
        if key.endswith(".weight_scale"):
            continue
        scale_key = key[: -len("weight")] + "weight_scale"
        if scale_key in packed:
            bits = t.shape[1] * 8 // (packed[scale_key].shape[1] * GROUP_SIZE)
            out[key] = deq(t, packed[scale_key], bits, torch.bfloat16)
        else:
            out[key] = t
    return out


def build_model(sd: dict[str, Any], ops: Any, device: Any) -> Any:
    """ComfyUI's FLUX.2 diffusion model, loaded through ``comfy.sd.load_diffusion_model_state_dict``."""
    import comfy.sd
    import torch

    options: dict[str, Any] = {"dtype": torch.bfloat16}
    if ops is not None:
        options["custom_operations"] = ops
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options=options, disable_dynamic=True)
    if patcher is None:
        raise RuntimeError("ComfyUI did not detect a FLUX.2 model in the synthetic state dict")
    dm = patcher.model.diffusion_model
    dm.to(device)
    dm.eval()
    return dm


def resident_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total



# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


def _measure(name: str, build: Any, args: argparse.Namespace, device: Any, ref: Any, label: str) -> tuple[dict[str, Any], Any]:
    """Build one model, time every (resolution, batch), then (``ref`` given) the final-latent
    cosine; with ``--compile`` also the ``torch.compile``d model at ``--compile-configs``.
    Returns (entry, final latents); failures are recorded in the entry, not raised."""
    import torch

    td = importlib.import_module(f"{PKG}.kernels.triton_dequant")  # the copy the pack's ops registered
    td.SCRATCH.clear()
    entry: dict[str, Any] = {"steps": {}}
    lat = None
    try:
        dm = build()
        entry["resident_bytes"] = resident_bytes(dm)
        for res, b in [(res, b) for res in args.resolutions for b in args.batches]:
            entry["steps"][f"{res}x{b}"] = time_step(dm, b, res, device, args.warmup, args.reps)
            log.info("%s %s %d^2 B%d: %.1f ms", label, name, res, b, entry["steps"][f"{res}x{b}"]["ms_median"])
        lat = euler_latents(dm, args.euler_res, device, args.euler_steps)
        entry["finite"] = bool(torch.isfinite(lat).all())
        if ref is not None:
            entry["cosine_vs_bf16"] = cosine(lat, ref)
        entry["scratch_bytes"] = td.SCRATCH.nbytes()
        if args.compile and name in args.compile_paths:
            entry["compiled"] = _measure_compiled(dm, args, device, f"{label} {name}")
    except Exception as e:  # noqa: BLE001 - report the failure in the table, keep benchmarking
        log.exception("%s %s failed", label, name)
        entry["error"] = f"{type(e).__name__}: {e}"
    dm = None
    gc.collect()
    torch.cuda.empty_cache()
    return entry, lat


def _measure_compiled(dm: Any, args: argparse.Namespace, device: Any, label: str) -> dict[str, Any]:
    """Per-step times of ``torch.compile(dm)`` (Inductor, ComfyUI's TorchCompileModel default);
    the warm-up calls include the compilation, whose wall time is reported separately."""
    import torch

    torch._dynamo.reset()
    # "inductor" is TorchCompileModel's default; "cudagraphs" its other choice (graph replay, no codegen)
    cdm = torch.compile(dm, backend=args.compile_backend)
    out: dict[str, Any] = {"steps": {}, "backend": args.compile_backend}
    for cfg in args.compile_configs:
        res, b = (int(v) for v in cfg.split("x"))
        t0 = time.perf_counter()
        time_step(cdm, b, res, device, 1, 1)
        out.setdefault("compile_s", {})[cfg] = round(time.perf_counter() - t0, 1)
        out["steps"][cfg] = time_step(cdm, b, res, device, args.warmup, args.reps)
        ms = out["steps"][cfg]["ms_median"]
        log.info("%s +%s %d^2 B%d: %.1f ms (compile %.0f s)", label, args.compile_backend, res, b, ms, out["compile_s"][cfg])
    torch._dynamo.reset()
    return out


def run_variant(variant: str, args: argparse.Namespace, ops_mod: types.ModuleType, device: Any) -> dict[str, Any]:
    from . import stock

    bits = {"binary": 1, "ternary": 2}[variant]
    packed = synthetic_state_dict(bits, device)
    result: dict[str, Any] = {"variant": variant, "bits": bits, "models": {}}

    # stock bf16 on the dequantized weights: the exact reference every cosine is taken against
    dense = dense_state_dict(packed)
    entry, ref = _measure("bf16", lambda: build_model(dense, None, device), args, device, None, variant)
    result["models"]["bf16"] = entry
    if ref is None:
        raise RuntimeError(f"the stock bf16 baseline failed: {entry.get('error')}")
    for path in args.stock:  # what a Klein user picks today, from the same weights
        entry, _ = _measure(path, lambda path=path: stock.build_stock(path, dense, packed, device), args, device, ref, variant)
        result["models"][path] = entry
    dense.clear()  # 7.7 GB of bf16 weights: free before the Bonsai models load
    for backend in args.backends:
        ops = ops_mod.make_bonsai_ops(backend, bits)
        entry, _ = _measure(backend, lambda ops=ops: build_model(packed, ops, device), args, device, ref, variant)
        result["models"][backend] = entry
    suffix = "compile" if args.compile_backend == "inductor" else args.compile_backend
    for name in list(result["models"]):  # compiled runs as their own rows
        comp = result["models"][name].pop("compiled", None)
        if comp is not None:
            result["models"][f"{name}+{suffix}"] = comp
    result["reference_latent_norm"] = float(ref.norm())
    return result


def chosen_backends(device: Any) -> dict[str, Any]:
    table = core("dispatch.table").get_table(device)
    return {k: v for k, v in table.entries().items()}


def cmd_bench_model(args: argparse.Namespace) -> int:
    from .model_cold import cold_start, first_image
    from .model_report import to_markdown
    from .model_sweep import linear_sweep

    if args.first_image:
        return first_image(args)
    if args.linear_sweep:
        import torch

        rep = {"env": env_info(torch.device("cuda")), **linear_sweep(args)}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}-linears.json").write_text(json.dumps(rep, indent=1), encoding="utf-8")
        for key, t in rep["per_step_totals_ms"].items():
            best = sorted((v, k) for k, v in t.items() if k.startswith("fp8/"))[:3]
            sys.stdout.write(
                f"{key}: bf16 {t.get('bf16', 0):.1f} ms, triton_dequant {t.get('triton_dequant', 0):.1f}, dequant only {t.get('dequant_only', 0):.1f}, "
                f"act quant only {t.get('act_quant_only', 0):.1f}, fp8 best per shape {t.get('fp8_best_per_shape', 0):.1f}, best fp8 {[(k, round(v, 1)) for v, k in best]}\n"
            )
        return 0
    import torch

    if not torch.cuda.is_available():
        sys.stdout.write("bench-model needs a CUDA GPU\n")
        return 1
    device = torch.device("cuda")
    ops_mod = setup_comfy(args.comfyui)
    report: dict[str, Any] = {"env": env_info(device), "args": {k: v for k, v in vars(args).items() if k != "func"}, "variants": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cold or args.cold_only:
        report["cold_start"] = [cold_start(args, v, args.cold_backend) for v in args.variants]
    if args.cold_only:
        (out / f"{args.name}-cold.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        sys.stdout.write(to_markdown(report) + "\n")
        return 0
    md = ""
    for variant in args.variants:
        report["variants"].append(run_variant(variant, args, ops_mod, device))
        report["dispatch_table"] = chosen_backends(device)
        # written after every variant: a run cut short still leaves its numbers
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        md = to_markdown(report)
        (out / f"{args.name}.md").write_text(md, encoding="utf-8")
        write_summary(out, args.name, report["env"], step_rows(report))
    sys.stdout.write(md + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-model", help="ComfyUI FLUX.2 Klein step: stock bf16 vs Bonsai ops per backend (GPU)")
    p.add_argument("--variants", nargs="+", default=["binary", "ternary"], choices=["binary", "ternary"])
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS))
    p.add_argument("--stock", nargs="*", default=["stock-fp8-fast", "stock-fp8-scaled"], help="stock ComfyUI FP8 baselines to add")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (--compile-paths) at --compile-configs")
    p.add_argument("--compile-paths", nargs="+", default=["bf16", "auto", "fp8_rowwise"])
    p.add_argument("--compile-configs", nargs="+", default=["512x1", "1024x1"])
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "cudagraphs"], help="torch.compile backend (TorchCompileModel's choices)")
    p.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--euler-steps", type=int, default=4)
    p.add_argument("--euler-res", type=int, default=1024)
    p.add_argument("--cold", action="store_true", help="also time the first image in fresh processes (empty / persisted caches)")
    p.add_argument("--cold-only", action="store_true", help="only the fresh-process first-image timings")
    p.add_argument("--cold-backend", default="auto")
    p.add_argument("--cold-timeout", type=int, default=300)
    p.add_argument("--comfyui", default=None, help="ComfyUI checkout (default $COMFYUI_PATH or ~/comfy/ComfyUI)")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--name", default="model-h100")
    p.add_argument("--linear-sweep", action="store_true", help="per-layer fast-path timings instead of the model benchmark")
    p.add_argument("--sweep-m", nargs="+", type=int, default=[1536, 4608])
    p.add_argument("--sweep-bits", nargs="+", type=int, default=[1, 2])
    p.add_argument("--first-image", default=None, choices=["binary", "ternary"], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_model)
