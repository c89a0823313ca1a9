"""Timing and fidelity helpers of the model benchmarks: inputs of a Klein step, CUDA-event timing of
one transformer step, a few Euler steps for latent comparisons, cosine, and the environment record."""

from __future__ import annotations

import datetime
import platform
import statistics
from typing import Any


def make_inputs(batch: int, res: int, device: Any, seed: int = 1) -> tuple[Any, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, 128, res // 16, res // 16, device=device, generator=g).to(torch.bfloat16)
    ctx = torch.randn(batch, 512, 7680, device=device, generator=g).to(torch.bfloat16)
    return x, ctx


def time_step(dm: Any, batch: int, res: int, device: Any, warmup: int, reps: int) -> dict[str, float]:
    import torch

    x, ctx = make_inputs(batch, res, device)
    t = torch.full((batch,), 0.7, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(warmup):
            dm(x, t, ctx)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dm(x, t, ctx)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    return {"ms_median": statistics.median(times), "ms_min": min(times), "peak_vram_bytes": torch.cuda.max_memory_allocated(device)}


def euler_latents(dm: Any, res: int, device: Any, steps: int) -> Any:
    """A flow-matching Euler loop (sigma 1 -> 0) on the raw diffusion model: final latents."""
    import torch

    x, ctx = make_inputs(1, res, device, seed=7)
    sig = torch.linspace(1.0, 0.0, steps + 1).tolist()
    with torch.inference_mode():
        for i in range(steps):
            t = torch.full((1,), sig[i], device=device, dtype=torch.bfloat16)
            v = dm(x, t, ctx)
            x = (x.float() + (sig[i + 1] - sig[i]) * v.float()).to(torch.bfloat16)
    return x.float()


def cosine(a: Any, b: Any) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def env_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import comfyui_version  # type: ignore[import-not-found]

        info["comfyui"] = comfyui_version.__version__
    except ImportError:
        info["comfyui"] = None
    return info
