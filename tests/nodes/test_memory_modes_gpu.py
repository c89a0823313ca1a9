"""The memory-mode matrix's key cases on a CUDA GPU: a stacked LoRA on a Bonsai model with the
non-dynamic ``ModelPatcher`` (what ``--disable-dynamic-vram``, ``--highvram``, ``--novram`` and
AMD/Intel/MPS users get; this test session starts ComfyUI without dynamic VRAM), on a card made
small with ``--reserve-vram`` (``comfy.model_management.EXTRA_RESERVED_VRAM``, the value that
flag sets), against the fully loaded model.

Runs with ``BONSAI_TEST_COMFY_DEVICE=gpu`` (see tests/README.md); skipped elsewhere. The reserve
is computed right before ComfyUI's own load (a PREPARE_SAMPLING wrapper, with ComfyUI's own memory
estimate for this prompt) so that the weight budget ``load_models_gpu`` derives is about half the
model: the model really loads partially (asserted), offloaded packed layers stream their codes to
the GPU per call, the LoRA branches and ComfyUI's LowVramPatch entries meet. The direct cases
(``load`` with a budget, ``partially_unload`` to the CPU, ``--novram``'s 0.1-byte budget) do
not depend on the card's free memory. Prints one JSON line (card, per-case equality) for
docs/benchmarks/.

Three models: ``plain``; ``packed`` (a stacked LoRA on packed layers only: unmerged branches,
bit-equal to the full load in every case and compute dtype); ``lora`` (the same stack plus a LoRA
on the dense edge layers img_in and the modulation, which stock ComfyUI merges itself). Stock
ComfyUI merges a *loaded* dense layer in ``patch_weight_to_device`` with the intermediate dtype
``lora_compute_dtype(device)`` -- float16 on a CUDA card (``should_use_fp16``) -- but an
*offloaded* one in ``LowVramPatch`` with the weight's own dtype. So ``lora`` in fp32 differs
between full load and offloaded by that fp16 rounding of the dense merge (H100: max 7.5e-4,
rel 1.5e-4), which tests/nodes/test_lora_merge_dtype.py proves on the CPU by emulating the CUDA
merge dtype. The bound used here is stock ComfyUI's own rounding, measured on the same card: the
full load with ``LORA_COMPUTE_DTYPES[card] = float32`` (both merges in fp32) against the default.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from harness.comfyui import session_on_gpu
from lora_fixtures import bfl_names, dense_edge_names, kohya_names, lora_tensors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.comfyui,
    pytest.mark.skipif(not torch.cuda.is_available() or not session_on_gpu(), reason="needs a CUDA GPU and BONSAI_TEST_COMFY_DEVICE=gpu"),
]

GIB = 1024**3
# bf16 + LoRA on dense edge layers: ComfyUI's fp16 merge (loaded) vs bf16 LowVramPatch (offloaded)
BF16_LORA_REL = 1e-2
# fp32 + LoRA on dense edge layers: offloaded cases stay within this many times stock ComfyUI's own
# fp16-vs-fp32 dense-merge difference (a partial load may merge some dense layers each way)
FP32_STOCK_ROUNDING_FACTOR = 2.0
CPU = torch.device("cpu")


def _conditioning() -> list:
    g = torch.Generator().manual_seed(3)
    return [[torch.randn(1, 8, 384, generator=g), {"pooled_output": None}]]


def _small_card(report: dict):
    """A PREPARE_SAMPLING wrapper that reserves VRAM so that about half the model's weights fit."""
    import comfy.model_management as mm
    import comfy.sampler_helpers

    def wrapper(executor, model, noise_shape, conds, *args, **kwargs):
        dev = model.load_device
        mm.unload_all_models()
        _, minimum = comfy.sampler_helpers.estimate_memory(model, noise_shape, conds)
        free = mm.get_free_memory(dev)
        # load_models_gpu (NVIDIA): budget = free - reserve - max(0.8 GiB, this prompt's minimum)
        reserve = free - max(0.8 * GIB, minimum) - model.model_size() / 2
        report["reserve_gb"] = round(reserve / GIB, 4)
        old = mm.EXTRA_RESERVED_VRAM
        mm.EXTRA_RESERVED_VRAM = int(reserve)
        try:
            out = executor(model, noise_shape, conds, *args, **kwargs)
        finally:
            mm.EXTRA_RESERVED_VRAM = old
        report["lowvram"] = bool(model.model.model_lowvram)
        report["loaded_mb"] = round(model.loaded_size() / 2**20, 2)
        report["model_mb"] = round(model.model_size() / 2**20, 2)
        return out

    return wrapper


def _direct(mode: str):
    def wrapper(executor, model, *args, **kwargs):
        out = executor(model, *args, **kwargs)
        dev = model.load_device
        if mode == "budget_half":
            model.unpatch_model(CPU)
            model.patch_model(dev, lowvram_model_memory=model.model_size() // 2)
        elif mode == "novram":
            model.unpatch_model(CPU)
            model.patch_model(dev, lowvram_model_memory=0.1)
        elif mode == "partially_unload":
            model.partially_unload(CPU, memory_to_free=model.model_size() // 2)
        return out

    return wrapper


@pytest.mark.parametrize("compute_dtype", ["fp32", "bf16"])
def test_lora_disable_dynamic_small_card_matches_full_load(comfyui, comfy_models, compute_dtype) -> None:
    """``plain`` and ``packed``: every case bit-equal (fp32 and bf16). ``lora`` (also on dense edge
    layers): stock ComfyUI merges those in fp16 when loaded and in the weight dtype when offloaded
    (LowVramPatch), so the offloaded cases may differ by that rounding: in fp32 at most
    FP32_STOCK_ROUNDING_FACTOR x stock's own fp16-vs-fp32 merge difference, in bf16 rel < BF16_LORA_REL."""
    import comfy.model_management as mm
    import comfy.patcher_extension

    loader, sampler = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("ternary")[0]
    base = loader.load_bonsai_model(path, "auto", compute_dtype, disable_dynamic=True)
    assert not base.is_dynamic() and base.load_device.type == "cuda"
    for name, tensors in {
        "gpu_a": {**lora_tensors(bfl_names(), "AB", seed=51), **lora_tensors(dense_edge_names(), "AB", seed=52)},
        "gpu_b": lora_tensors(kohya_names(), "updown", seed=53, alpha=4.0),
    }.items():
        safetensors.torch.save_file(tensors, comfy_models / "loras" / f"{name}.safetensors")
    safetensors.torch.save_file(lora_tensors(bfl_names(), "AB", seed=51), comfy_models / "loras" / "gpu_a_packed.safetensors")
    only = comfyui.nodes.LoraLoaderModelOnly()
    lora = only.load_lora_model_only(only.load_lora_model_only(base, "gpu_a.safetensors", 0.8)[0], "gpu_b.safetensors", -0.5)[0]
    packed = only.load_lora_model_only(only.load_lora_model_only(base, "gpu_a_packed.safetensors", 0.8)[0], "gpu_b.safetensors", -0.5)[0]

    def sample(patcher, wrapper=None) -> torch.Tensor:
        model = patcher.clone()
        if wrapper is not None:
            comfy.patcher_extension.add_wrapper_with_key(
                comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "bonsai-gpu-mode", wrapper, model.model_options, is_model_options=True
            )
        try:
            return sampler.sample_recipe(model, _conditioning(), 42, sampler.empty_latent(64, 64, 1), steps=3)["samples"].float().cpu()
        finally:
            mm.unload_all_models()

    report: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "compute_dtype": compute_dtype, "cases": {}}
    failures = []
    dev = base.load_device
    merge_dtype = mm.lora_compute_dtype(dev)
    mm.LORA_COMPUTE_DTYPES[dev] = torch.float32
    try:  # stock ComfyUI merging the loaded dense layers in fp32, as LowVramPatch does offloaded ones
        lora_fp32_merge = sample(lora)
    finally:
        mm.LORA_COMPUTE_DTYPES[dev] = merge_dtype
    report["lora_compute_dtype"] = str(merge_dtype)
    for kind, patcher in (("plain", base), ("packed", packed), ("lora", lora)):
        ref = sample(patcher)
        if kind == "lora":
            report["stock_dense_merge_fp16_vs_fp32_max_abs"] = stock = float((ref - lora_fp32_merge).abs().max())
        cases = {"small_card_reserve_vram": _small_card(report.setdefault(f"{kind}_small_card", {}))}
        cases.update({m: _direct(m) for m in ("budget_half", "novram", "partially_unload")})
        for case, wrapper in cases.items():
            got = sample(patcher, wrapper)
            diff = float((got - ref).abs().max())
            rel = float((got - ref).norm() / ref.norm())
            report["cases"][f"{kind}/{case}"] = {"equal": bool(torch.equal(got, ref)), "max_abs_diff": diff, "rel_l2": rel}
            if kind != "lora":
                within = False  # no dense merge involved: bit-equal only
            elif compute_dtype == "fp32":
                within = diff <= FP32_STOCK_ROUNDING_FACTOR * stock
            else:
                within = rel < BF16_LORA_REL
            if not torch.equal(got, ref) and not within:
                failures.append(f"{kind}/{case}: max |diff| {diff}, rel {rel}")
        report[f"{kind}_vs_plain_max_abs"] = float((ref - sample(base)).abs().max()) if kind != "plain" else 0.0
    print("MEMORY_MODES_GPU " + json.dumps(report))
    assert all(report[f"{k}_small_card"]["lowvram"] for k in ("plain", "packed", "lora")), report
    assert report["lora_vs_plain_max_abs"] > 0 and report["packed_vs_plain_max_abs"] > 0, "the LoRAs must change the latents"
    if compute_dtype == "fp32" and merge_dtype == torch.float16:  # the fp32 reference really merged differently
        assert report["stock_dense_merge_fp16_vs_fp32_max_abs"] > 0, report
    assert not failures, failures
