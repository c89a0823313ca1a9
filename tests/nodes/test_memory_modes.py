"""The memory-mode matrix on CPU against the ComfyUI the tests run (0.29): every way ComfyUI's
non-dynamic ModelPatcher can hold a Bonsai model, each with and without a stacked LoRA, gives the
latents of the fully loaded model, bit for bit (the exact backend on CPU).

How each user-facing mode reaches a model (``comfy.model_management.load_models_gpu``): ``--highvram``
and ``--gpu-only`` load fully (``lowvram_model_memory=0``); ``--lowvram`` and a card short of memory
load with a budget (``ModelPatcher.load(lowvram_model_memory=budget)``); ``--novram`` with a
0.1-byte budget (everything offloaded); memory pressure later calls ``partially_unload`` and a
freed card ``partially_load``. On a CPU ``load_models_gpu`` always loads fully, so the cases apply
these calls themselves, after ComfyUI's own load, from a PREPARE_SAMPLING wrapper -- the patcher
API and state are exactly what the GPU paths use. Dynamic VRAM (``ModelPatcherDynamic``) needs
CUDA (comfy-aimdo); on a CPU ComfyUI reroutes it to ``ModelPatcher``, which
``test_dynamic_patcher_reroutes_on_cpu`` pins down, and ``test_newer_comfy_paths.py`` replays
the questions its ``load`` asks of every weight. The GPU key cases (``--disable-dynamic-vram``, a
card made small with ``--reserve-vram``, stacked LoRA) are ``test_memory_modes_gpu.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import safetensors.torch
import torch
from lora_fixtures import bfl_names, dense_edge_names, kohya_names, lora_tensors

pytestmark = pytest.mark.comfyui

CPU = torch.device("cpu")
STEPS = 2


def _conditioning() -> list:
    g = torch.Generator().manual_seed(3)
    return [[torch.randn(1, 8, 384, generator=g), {"pooled_output": None}]]


def _half(p) -> int:
    return p.model_size() // 2


def _reload(p, budget: float) -> None:
    p.unpatch_model(CPU)
    p.patch_model(CPU, lowvram_model_memory=budget)


# mode -> what ComfyUI does to the loaded patcher in that mode (see the module docstring)
MODES: dict[str, Callable] = {
    "full": lambda p: None,
    "highvram_gpu_only": lambda p: _reload(p, 0),
    "lowvram_budget": lambda p: _reload(p, _half(p)),
    "novram": lambda p: _reload(p, 0.1),
    "partially_unload": lambda p: p.partially_unload(CPU, memory_to_free=_half(p)),
    "novram_then_partially_load": lambda p: (_reload(p, 0.1), p.partially_load(CPU, extra_memory=_half(p))),
    "unload_then_reload_fully": lambda p: (
        p.partially_unload(CPU, memory_to_free=p.model_size()),
        p.partially_load(CPU, extra_memory=10**12),
    ),
    "unpatch_then_lowvram": lambda p: (p.unpatch_model(CPU, unpatch_weights=True), p.patch_model(CPU, lowvram_model_memory=_half(p))),
}


@pytest.fixture(scope="module")
def env(comfyui, comfy_models):
    loader, sampler = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("ternary")[0]
    base = loader.load_bonsai_model(path, "auto", "fp32")
    files = {
        "mm_a": {**lora_tensors(bfl_names(), "AB", seed=31), **lora_tensors(dense_edge_names(), "AB", seed=32)},
        "mm_b": lora_tensors(kohya_names(), "updown", seed=33, alpha=4.0),
    }
    for name, tensors in files.items():
        safetensors.torch.save_file(tensors, comfy_models / "loras" / f"{name}.safetensors")
    only = comfyui.nodes.LoraLoaderModelOnly()
    stacked = only.load_lora_model_only(only.load_lora_model_only(base, "mm_a.safetensors", 0.8)[0], "mm_b.safetensors", -0.5)[0]
    return {"loader": loader, "sampler": sampler, "path": path, "plain": base, "lora": stacked}


def sample(env, patcher, mode: Callable | None = None, seen: dict | None = None) -> torch.Tensor:
    """Latents of the recipe (2 steps, 64x64) with ``mode`` applied right after ComfyUI's own load."""
    import comfy.model_management
    import comfy.patcher_extension

    model = patcher.clone()
    if mode is not None:

        def apply_mode(executor, m, *args, **kwargs):
            out = executor(m, *args, **kwargs)
            mode(m)
            if seen is not None:
                layers = [x for _, x in env["loader"].bonsai_linears(m.model.diffusion_model) if x.is_packed]
                seen["offloaded_packed"] = sum(hasattr(x, "prev_comfy_cast_weights") for x in layers)
                seen["lowvram"] = m.model.model_lowvram
                seen["branches"] = sum(bool(x.bonsai_lora) for x in layers)
            return out

        comfy.patcher_extension.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "bonsai-mode", apply_mode, model.model_options, is_model_options=True
        )
    try:
        return env["sampler"].sample_recipe(model, _conditioning(), 42, env["sampler"].empty_latent(64, 64, 1), steps=STEPS)["samples"]
    finally:
        comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def reference(env) -> dict[str, torch.Tensor]:
    return {kind: sample(env, env[kind]) for kind in ("plain", "lora")}


@pytest.mark.parametrize("kind", ["plain", "lora"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_memory_mode_gives_the_fully_loaded_latents(env, reference, kind, mode) -> None:
    seen: dict = {}
    got = sample(env, env[kind], MODES[mode], seen)
    if mode in ("lowvram_budget", "novram", "partially_unload", "novram_then_partially_load"):
        assert seen["lowvram"] and seen["offloaded_packed"] > 0, seen  # the mode really offloaded packed layers
    assert seen["branches"] > 0 if kind == "lora" else seen["branches"] == 0, seen
    assert torch.equal(got, reference[kind])
    assert not torch.equal(reference["lora"], reference["plain"])


def test_dynamic_patcher_reroutes_on_cpu(env) -> None:
    """What a CPU user gets when ComfyUI picks dynamic VRAM: the plain ModelPatcher (same latents)."""
    import comfy.model_patcher

    p = env["plain"]
    dyn = comfy.model_patcher.ModelPatcherDynamic(p.model, CPU, CPU)
    assert type(dyn) is comfy.model_patcher.ModelPatcher and not dyn.is_dynamic()


def test_disable_dynamic_loader_path(env, reference) -> None:
    """``cached_patcher_init`` is called with ``disable_dynamic=True`` for non-dynamic delegates."""
    fn, args = env["plain"].cached_patcher_init[:2]
    twin = fn(*args, disable_dynamic=True)
    assert twin.model is not env["plain"].model and not twin.is_dynamic()
    assert torch.equal(sample(env, twin), reference["plain"])


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_deepclone_multigpu_through_cached_patcher_init(env, reference, kind) -> None:
    """ComfyUI's MultiGPU nodes deep-clone through the loader's factory: a fresh model, same patches."""
    clone = env[kind].deepclone_multigpu(new_load_device=CPU)
    assert clone.model is not env[kind].model and clone.patches.keys() == env[kind].patches.keys()
    assert torch.equal(sample(env, clone, MODES["novram"]), reference[kind])


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_torch_compile_clone_under_lowvram(comfyui, env, reference, kind) -> None:
    """TorchCompileModel's clone (its wrapper, dynamo's eager backend to keep CPU time short) in lowvram."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    compiled = env[kind].clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    torch._dynamo.reset()
    try:
        assert torch.equal(sample(env, compiled, MODES["partially_unload"]), reference[kind])
    finally:
        torch._dynamo.reset()
