"""The child process of ``bench-prompt``: ComfyUI started as ``main.py`` starts it (GPU, its own
argument parser, built-in extra nodes, this pack through ComfyUI's custom-node loader), prompts
run through ``execution.PromptExecutor``; prints one JSON line with the measurements.

The only thing not ComfyUI's own is the web server: :class:`_Server` takes the events the
executor would send over the websocket (nothing listens), as a headless run has no browser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .prompt_files import CANONICAL, DENSE, FP8_SCALED, TE_BF16, TE_FP8

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
TEXT = "a bonsai tree on a wooden table by a window, soft morning light, detailed photograph"

# path -> (model loader node, its inputs; text encoder: "bonsai" or a stock CLIPLoader file)
PATHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "stock-bf16": ("UNETLoader", {"unet_name": DENSE, "weight_dtype": "default"}, TE_BF16),
    "stock-fp8-fast": ("UNETLoader", {"unet_name": DENSE, "weight_dtype": "fp8_e4m3fn_fast"}, TE_FP8),
    "stock-fp8-scaled": ("UNETLoader", {"unet_name": FP8_SCALED, "weight_dtype": "default"}, TE_FP8),
    "bonsai-auto": ("BonsaiModelLoader", {"model_name": CANONICAL, "backend": "auto", "compute_dtype": "default"}, "bonsai"),
    "bonsai-fp8-rowwise": ("BonsaiModelLoader", {"model_name": CANONICAL, "backend": "fp8_rowwise", "compute_dtype": "default"}, "bonsai"),
    "bonsai-fp8": ("BonsaiModelLoader", {"model_name": CANONICAL, "backend": "fp8", "compute_dtype": "default"}, "bonsai"),
    "bonsai-auto-fp8": ("BonsaiModelLoader", {"model_name": CANONICAL, "backend": "auto-fp8", "compute_dtype": "default"}, "bonsai"),
}


class _Server:
    """What the executor and stock nodes call on ``server.PromptServer.instance``."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.node_replace_manager: Any = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        pass

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, text: bytes | str, node_id: str, sid: str | None = None) -> None:
        pass


def _boot(comfy_root: Path, work: Path, extra_args: list[str]) -> tuple[Any, Any, Any]:
    sys.path.insert(0, str(comfy_root))
    for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
        del sys.modules[name]  # ComfyUI's nodes.py, not this repository's nodes/ package
    sys.argv = ["main.py", "--base-directory", str(work), *extra_args]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management  # noqa: F401  (parses the arguments, picks the GPU)
    import execution

    import nodes

    srv = _Server()
    try:
        # stock nodes reach the server through PromptServer.instance (main.py sets it); the web
        # server's own dependencies (its asset database) may be absent on a headless GPU box
        import server
        from app.node_replace_manager import NodeReplaceManager

        srv.node_replace_manager = NodeReplaceManager()
        server.PromptServer.instance = srv
    except ImportError as e:
        log.warning("ComfyUI's server module does not import here (%s): extra nodes that need it are skipped", e)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    link = work / "custom_nodes" / "bonsai_image"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise RuntimeError(f"ComfyUI could not load the pack from {link}")
    executor = execution.PromptExecutor(srv, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return nodes, execution, executor


def _option(nodes: Any, node: str, field: str, want: str) -> str:
    """The entry of a loader's dropdown that contains ``want`` (the names the pack lists)."""
    spec = nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"][field]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 nodes describe a combo as ("COMBO", {"options": ...})
    hits = [o for o in options if want in o]
    if not hits:
        raise RuntimeError(f"{node}.{field}: nothing containing {want!r} in {options}")
    return sorted(hits, key=len)[0]


def build_prompt(
    nodes: Any, path: str, variant: str, res: int, seed: int, prefix: str, compile_model: str | None, text: str = TEXT
) -> dict[str, Any]:
    """The Klein text-to-image graph for ``path``; ``compile_model``: a TorchCompileModel backend, or None;
    a new ``text`` makes the executor encode again (otherwise it reuses the cached conditioning)."""
    loader, inputs, te = PATHS[path]
    inputs = {k: (v.format(variant=variant) if isinstance(v, str) else v) for k, v in inputs.items()}
    p: dict[str, Any] = {"1": {"class_type": loader, "inputs": inputs}}
    if te == "bonsai":
        p["2"] = {
            "class_type": "BonsaiTextEncoderLoader",
            "inputs": {"text_encoder": _option(nodes, "BonsaiTextEncoderLoader", "text_encoder", variant)},
        }
    else:
        p["2"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": te, "type": "flux2", "device": "default"}}
    p["3"] = {"class_type": "BonsaiVAELoader", "inputs": {"vae_folder": _option(nodes, "BonsaiVAELoader", "vae_folder", variant)}}
    model = ["1", 0]
    if compile_model:
        p["5"] = {"class_type": "TorchCompileModel", "inputs": {"model": model, "backend": compile_model}}
        model = ["5", 0]
    p.update(
        {
            "10": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
            "11": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["10", 0]}},
            "22": {"class_type": "CFGGuider", "inputs": {"cfg": 1.0, "model": model, "positive": ["10", 0], "negative": ["11", 0]}},
            "23": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "20": {"class_type": "Flux2Scheduler", "inputs": {"steps": 4, "width": res, "height": res}},
            "21": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": res, "height": res, "batch_size": 1}},
            "24": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "25": {
                "class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["24", 0], "guider": ["22", 0], "sampler": ["23", 0], "sigmas": ["20", 0], "latent_image": ["21", 0]},
            },
            "30": {"class_type": "VAEDecode", "inputs": {"samples": ["25", 0], "vae": ["3", 0]}},
            "31": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["30", 0]}},
            "32": {"class_type": "SaveLatent", "inputs": {"filename_prefix": prefix, "samples": ["25", 0]}},
        }
    )
    return p


def _run(execution: Any, executor: Any, prompt: dict[str, Any]) -> float:
    import torch

    pid = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(pid, prompt, None))
    if not valid:
        raise RuntimeError(f"prompt invalid: {error} {node_errors}")
    t0 = time.perf_counter()
    asyncio.run(executor.execute_async(prompt, pid, {}, outputs))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if not executor.success:
        raise RuntimeError(f"prompt failed: {executor.status_messages[-1:]}")
    return dt


def _time_te(nodes: Any, path: str, variant: str) -> dict[str, Any]:
    """Load the path's text encoder and encode twice, outside the executor (same process)."""
    import torch

    _, _, te = PATHS[path]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if te == "bonsai":
        cls = nodes.NODE_CLASS_MAPPINGS["BonsaiTextEncoderLoader"]
        out = cls.execute(text_encoder=_option(nodes, "BonsaiTextEncoderLoader", "text_encoder", variant))
        clip = out.result[0] if hasattr(out, "result") else out[0]
    else:
        clip = nodes.CLIPLoader().load_clip(te, "flux2", "default")[0]
    load_s = time.perf_counter() - t0
    rec: dict[str, Any] = {"load_s": round(load_s, 2)}
    for label, text in (("first_encode_s", TEXT), ("second_encode_s", TEXT + ", film grain")):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        clip.encode_from_tokens_scheduled(clip.tokenize(text))
        torch.cuda.synchronize()
        rec[label] = round(time.perf_counter() - t0, 3)
    return rec


def run_child(args: argparse.Namespace) -> int:
    import torch

    path = args.paths[0]
    work = Path(args.work).resolve()
    extra = ["--reserve-vram", str(args.reserve_vram[0])] if args.reserve_vram else []
    t0 = time.perf_counter()
    nodes, execution, executor = _boot(Path(args.comfyui), work, extra)
    rec: dict[str, Any] = {
        "path": path,
        "boot_s": round(time.perf_counter() - t0, 2),
        "compile": bool(args.compile),
        "compile_backend": args.compile_backend if args.compile else None,
        "text_each_prompt": bool(args.vary_text),
        "prompts": {},
        "latents": {},
    }
    tag = f"bench-{path}-{'c' if args.compile else 'e'}-{args.reserve_vram[0] if args.reserve_vram else 'x'}-{uuid.uuid4().hex[:6]}"
    try:
        for res in args.resolutions:
            times = []
            torch.cuda.reset_peak_memory_stats()
            for i in range(1 + args.warm):
                prefix = f"{tag}/{res}-{i}"
                text = f"{TEXT}, variation {res}-{i}" if args.vary_text else TEXT  # new text: the prompt encodes again
                prompt = build_prompt(nodes, path, args.variant, res, 100 + i, prefix, args.compile_backend if args.compile else None, text)
                times.append(_run(execution, executor, prompt))
                log.info("%s %d^2 prompt %d: %.3f s", path, res, i, times[-1])
            free, total = torch.cuda.mem_get_info()
            rec["prompts"][str(res)] = {
                "first_s": round(times[0], 3),
                "warm_s": round(statistics.median(times[1:]), 4) if len(times) > 1 else None,
                "all_s": [round(t, 3) for t in times],
                "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
                "used_after_gb": round((total - free) / 1e9, 2),
            }
            # the first prompt's latents (seed 100) are compared across paths
            out_dir = work / "output" / tag
            lat = sorted(out_dir.glob(f"{res}-0*.latent"))
            if lat:
                rec["latents"][str(res)] = str(lat[0])
        rec["te"] = _time_te(nodes, path, args.variant)
    except Exception as e:  # noqa: BLE001 - the parent reports it next to the other paths
        log.exception("%s failed", path)
        rec["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.write(json.dumps(rec) + "\n")
    return 0
