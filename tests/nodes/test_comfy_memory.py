"""Model management with packed layers: lowvram partial loads, interrupts, repeated load/unload, clones."""

from __future__ import annotations

import gc
import os
import weakref

import psutil
import pytest
import torch
from harness.graphs import bonsai_loader, capture, recipe

pytestmark = pytest.mark.comfyui

RSS_GROWTH_BOUND_MB = 25.0  # for 15 cycles after warm-up; one leaked tiny model per cycle would be ~75 MB


def _conditioning(seed: int = 3) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 384, generator=g), {"pooled_output": None}]]


def test_lowvram_partial_load_gives_same_latents(comfyui):
    """ComfyUI's lowvram state (layers left on the offload device, cast per call) on half the model."""
    import comfy.model_management
    import comfy.patcher_extension

    loader, sampler, ops = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler"), comfyui.pack("nodes.ops")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("ternary")[0]
    latent = sampler.empty_latent(64, 64, 1)

    full = loader.load_bonsai_model(path)
    ref = sampler.sample_recipe(full, _conditioning(), 42, latent, steps=2)["samples"]
    comfy.model_management.unload_all_models()

    low = loader.load_bonsai_model(path)
    seen: dict[str, object] = {}

    def offload_half(executor, model, *args, **kwargs):
        # On a GPU, load_models_gpu picks a lowvram budget when VRAM is short; a CPU never does,
        # so after ComfyUI's own load, free half the weights the way it would under pressure.
        out = executor(model, *args, **kwargs)
        seen["freed"] = model.partially_unload(model.offload_device, memory_to_free=model.loaded_size() // 2)
        layers = [m for _, m in ops.bonsai_linears(model.model.diffusion_model) if m.is_packed]
        seen["lowvram_packed"] = sum(hasattr(m, "prev_comfy_cast_weights") for m in layers)
        seen["model_lowvram"] = model.model.model_lowvram
        return out

    comfy.patcher_extension.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "bonsai-test-lowvram", offload_half, low.model_options, is_model_options=True
    )
    out = sampler.sample_recipe(low, _conditioning(), 42, latent, steps=2)["samples"]
    print(f"lowvram: {seen}")
    assert seen["model_lowvram"] is True and seen["freed"] > 0 and seen["lowvram_packed"] > 0, seen
    assert torch.equal(out, ref)
    comfy.model_management.unload_all_models()


def test_interrupt_mid_sampling_then_next_prompt_works(comfyui):
    import comfy.model_management

    import nodes

    canonical, _ = comfyui.tiny_model("binary")
    prompt = recipe(bonsai_loader(canonical), steps=4)
    prompt["8"] = capture(["1", 0], "model")
    first = comfyui.run(prompt)
    assert first.success, first.error
    patcher = first.captured["model"]
    layer = patcher.model.diffusion_model.single_blocks[1].linear2
    assert layer.is_packed
    calls = []

    def interrupt_on_second_call(module, args):
        calls.append(1)
        if len(calls) == 2:  # step 2: what POST /interrupt does
            nodes.interrupt_processing(True)

    completed = []
    handles = [layer.register_forward_pre_hook(interrupt_on_second_call), layer.register_forward_hook(lambda *a: completed.append(1))]
    try:
        prompt["3"]["inputs"]["seed"] = 7  # the loader stays cached: the hooks are on the model this prompt uses
        r = comfyui.run(prompt, fresh_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert r.interrupted and not r.success
    assert len(calls) == 2 and len(completed) == 1  # the packed layer's own forward raised (run_every_op)
    assert max(v for v, _, _ in comfyui.progress) == 1
    assert not comfy.model_management.processing_interrupted()

    prompt["3"]["inputs"]["seed"] = 42
    again = comfyui.run(prompt, fresh_cache=False)
    assert again.success, again.error
    assert torch.equal(again.latent(), first.latent())


def _rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def test_twenty_load_unload_cycles_do_not_grow_memory(comfyui):
    import comfy.model_management

    canonical, _ = comfyui.tiny_model("ternary")
    prompt = recipe(bonsai_loader(canonical), steps=1)
    prompt["8"] = capture(["1", 0], "model")
    refs: list[weakref.ref] = []
    rss: list[float] = []
    for _ in range(20):
        r = comfyui.run(prompt)  # fresh cache: the loader runs again, the old model is dropped
        assert r.success, r.error
        refs.append(weakref.ref(r.captured["model"].model))
        del r
        comfyui.captured.clear()
        comfyui.executor.reset()
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        gc.collect()
        rss.append(_rss_mb())
    alive = [i for i, ref in enumerate(refs) if ref() is not None]
    assert alive == [], f"models of cycles {alive} are still referenced after unload"
    growth = rss[-1] - rss[4]
    print(f"RSS per cycle (MB): {[round(x, 1) for x in rss]}; growth cycles 5..20: {growth:.1f} MB")
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew {growth:.1f} MB over cycles 5..20: {[round(x) for x in rss]}"


def test_cached_patcher_init_rebuilds_an_independent_model(comfyui):
    """ComfyUI re-runs the loader (cached_patcher_init) for non-dynamic delegates and multi-GPU clones."""
    loader, sampler = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("binary")[0]
    patcher = loader.load_bonsai_model(path)
    assert patcher.cached_patcher_init[0] is loader.load_bonsai_model
    twin = patcher.clone(force_deepcopy=True)
    assert twin.model is not patcher.model
    latent = sampler.empty_latent(64, 64, 1)
    a = sampler.sample_recipe(patcher, _conditioning(), 5, latent, steps=2)["samples"]
    b = sampler.sample_recipe(twin, _conditioning(), 5, latent, steps=2)["samples"]
    assert torch.equal(a, b)
