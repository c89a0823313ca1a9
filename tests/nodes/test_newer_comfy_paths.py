"""Generic sequences newer ComfyUI releases run on ``module.weight``, replayed on Bonsai layers.

ComfyUI 0.36+ (``comfy/model_patcher.py``, non-dynamic ``ModelPatcher``): for a module that ends up
offloaded with a LoRA patch, ``load()``'s lowvram branch and ``partially_unload()`` now ask

    force_patch_weights or comfy.lora.calculate_shape(patches[key], m.weight, key) != m.weight.shape

and then either merge (``patch_weight_to_device(key)``) or attach a ``LowVramPatch`` (``load`` sets
``m.weight_function = [patch]``, ``partially_unload`` appends it). The tests below perform those
generic operations with 0.29's own classes and functions on the real Bonsai layers (the newer
control flow expressed here, not copied); with ``weight is None`` (before packed layers had a weight
view) the first line raised ``AttributeError: 'NoneType' object has no attribute 'shape'``.
Dynamic VRAM's ``setup_param`` (0.29+) asks the same shape question and sizes the layer for its
staging buffer with ``comfy.memory_management.vram_aligned_size(weight)``.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from lora_fixtures import bfl_names, lora_tensors

pytestmark = pytest.mark.comfyui

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(comfyui, comfy_models):
    loader = comfyui.pack("nodes.model_loader")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("binary")[0]
    base = loader.load_bonsai_model(path, "auto", "fp32")
    safetensors.torch.save_file(lora_tensors(bfl_names(), "AB", seed=41), comfy_models / "loras" / "newer.safetensors")
    lora = comfyui.nodes.LoraLoaderModelOnly().load_lora_model_only(base, "newer.safetensors", 0.9)[0]
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 128, 8, 8, generator=g), torch.tensor([0.6]), torch.randn(1, 7, 384, generator=g))
    return {"loader": loader, "lora": lora, "inputs": inputs}


def _forward(p, inputs) -> torch.Tensor:
    x, t, ctx = inputs
    with torch.no_grad():
        return p.model.apply_model(x, t, c_crossattn=ctx).clone()


def _packed_patched(p, loader) -> list[tuple[str, torch.nn.Module]]:
    return [
        (f"diffusion_model.{n}", m)
        for n, m in loader.bonsai_linears(p.model.diffusion_model)
        if m.is_packed and f"diffusion_model.{n}.weight" in p.patches
    ]


def newer_lowvram_patch(p, n: str, m: torch.nn.Module, force_patch_weights: bool, append: bool) -> str:
    """The 0.36+ decision for one offloaded module's weight (load: set; partially_unload: append)."""
    import comfy.lora
    from comfy.model_patcher import LowVramPatch, get_key_weight

    key = f"{n}.weight"
    if force_patch_weights or comfy.lora.calculate_shape(p.patches[key], m.weight, key) != m.weight.shape:
        p.patch_weight_to_device(key)
        return "merged"
    _, set_func, convert_func = get_key_weight(p.model, key)
    patch = LowVramPatch(key, p.patches, convert_func, set_func)
    if append:
        m.weight_function.append(patch)
    else:
        m.weight_function = [patch]
    return "lowvram_patch"


@pytest.mark.parametrize("force_patch_weights", [False, True])
def test_newer_load_lowvram_branch(env, force_patch_weights) -> None:
    p, loader = env["lora"], env["loader"]
    p.patch_model(CPU, lowvram_model_memory=0)
    want = _forward(p, env["inputs"])
    p.unpatch_model(CPU)
    p.patch_model(CPU, lowvram_model_memory=0.1)  # novram: every module offloaded
    try:
        layers = _packed_patched(p, loader)
        assert layers
        codes = {n: m.codes.data_ptr() for n, m in layers}
        outcome = {newer_lowvram_patch(p, n, m, force_patch_weights, append=False) for n, m in layers}
        assert outcome == {"merged" if force_patch_weights else "lowvram_patch"}
        for n, m in layers:  # nothing was merged into or re-quantized from the codes
            assert m.codes.data_ptr() == codes[n] and "weight" not in dict(m.named_parameters())
        assert torch.equal(_forward(p, env["inputs"]), want)
    finally:
        p.detach()


@pytest.mark.parametrize("force_patch_weights", [False, True])
def test_newer_partially_unload(env, force_patch_weights) -> None:
    p, loader = env["lora"], env["loader"]
    p.patch_model(CPU, lowvram_model_memory=0)
    try:
        want = _forward(p, env["inputs"])
        for n, m in _packed_patched(p, loader):  # what partially_unload does for each freed module
            m.to(CPU)
            newer_lowvram_patch(p, n, m, force_patch_weights, append=True)
            m.prev_comfy_cast_weights = m.comfy_cast_weights
            m.comfy_cast_weights = True
            m.comfy_patched_weights = False
        p.model.model_lowvram = True
        assert torch.equal(_forward(p, env["inputs"]), want)
        p.unpatch_model(CPU)  # restores backups of the merged keys through set_attr_param
        for _, m in _packed_patched(p, loader):
            assert m.is_packed and "weight" not in dict(m.named_parameters()) and m.weight_function == []
    finally:
        p.detach()


def test_dynamic_setup_param_questions(env) -> None:
    """What ModelPatcherDynamic.load asks of every weight (a CPU cannot build one: it needs comfy-aimdo on CUDA)."""
    import comfy.lora
    import comfy.memory_management
    from comfy.model_patcher import get_key_weight

    p, loader = env["lora"], env["loader"]
    for n, m in _packed_patched(p, loader):
        key = f"{n}.weight"
        weight, set_func, convert_func = get_key_weight(p.model, key)
        assert weight is not None and set_func is not None and convert_func is not None
        assert comfy.lora.calculate_shape(p.patches[key], weight, key) == weight.shape
        aligned = comfy.memory_management.vram_aligned_size(weight)  # staged by packed bytes, not dense
        assert m.codes.nbytes + m.scales.nbytes <= aligned < m.codes.nbytes + m.scales.nbytes + 2048
