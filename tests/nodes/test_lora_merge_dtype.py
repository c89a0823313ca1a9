"""Why a LoRA on the dense edge layers makes offloaded runs differ from the full load on a CUDA
card, proven on the CPU against ComfyUI 0.29.

Stock ComfyUI merges a LoRA into a *loaded* dense weight in ``ModelPatcher.patch_weight_to_device``
with the intermediate dtype ``comfy.model_management.lora_compute_dtype(device)``: float16 on a
CUDA card (``should_use_fp16``), float32 on a CPU. An *offloaded* dense weight is merged per call
by ``LowVramPatch.__call__`` with ``intermediate_dtype=weight.dtype`` (float32 for an fp32 model).
So on CUDA stock ComfyUI's own dense merge rounds differently when loaded and when offloaded.
Packed Bonsai layers never merge (unmerged branches, nodes/lora.py) and do not read that dtype.

The CPU emulates the CUDA card by setting ``LORA_COMPUTE_DTYPES[cpu] = float16`` (restored after):
* a LoRA on packed layers only: every offloaded mode is bit-equal to the full load;
* a LoRA on dense edge layers only: the offloaded modes differ, the difference vanishes with the
  float32 setting, ``--novram`` (every dense layer offloaded) equals the full load merged in float32
  bit for bit, and stock ``patch_weight_to_device`` vs ``LowVramPatch`` on the same dense weight
  differ by float16 rounding -- the whole difference is stock ComfyUI's dense merge.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from lora_fixtures import bfl_names, dense_edge_names, kohya_names, lora_tensors
from test_memory_modes import MODES, sample

pytestmark = pytest.mark.comfyui

CPU = torch.device("cpu")
OFFLOADED = ("lowvram_budget", "novram", "partially_unload")


@pytest.fixture(scope="module")
def merge_env(comfyui, comfy_models):
    loader, sampler = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("ternary")[0]
    base = loader.load_bonsai_model(path, "auto", "fp32")
    files = {
        "md_packed_a": lora_tensors(bfl_names(), "AB", seed=61),
        "md_packed_b": lora_tensors(kohya_names(), "updown", seed=62, alpha=4.0),
        "md_dense": lora_tensors(dense_edge_names(), "AB", seed=63),
    }
    for name, tensors in files.items():
        safetensors.torch.save_file(tensors, comfy_models / "loras" / f"{name}.safetensors")
    only = comfyui.nodes.LoraLoaderModelOnly()
    packed_a = only.load_lora_model_only(base, "md_packed_a.safetensors", 0.8)[0]
    packed = only.load_lora_model_only(packed_a, "md_packed_b.safetensors", -0.5)[0]
    dense = only.load_lora_model_only(base, "md_dense.safetensors", 0.8)[0]
    return {"loader": loader, "sampler": sampler, "plain": base, "packed": packed, "dense": dense}


@pytest.fixture
def lora_dtype(monkeypatch):
    """Set ComfyUI's LoRA merge dtype for the CPU (what ``should_use_fp16`` picks on a CUDA card)."""
    import comfy.model_management as mm

    def set_to(dtype: torch.dtype) -> None:
        monkeypatch.setitem(mm.LORA_COMPUTE_DTYPES, CPU, dtype)

    yield set_to
    mm.unload_all_models()


@pytest.mark.parametrize("mode", OFFLOADED)
def test_packed_lora_offloaded_is_bit_equal_with_fp16_merge_dtype(merge_env, lora_dtype, mode) -> None:
    lora_dtype(torch.float16)
    full = sample(merge_env, merge_env["packed"])
    seen: dict = {}
    got = sample(merge_env, merge_env["packed"], MODES[mode], seen)
    assert seen["lowvram"] and seen["offloaded_packed"] > 0 and seen["branches"] > 0, seen
    assert torch.equal(got, full), float((got - full).abs().max())
    assert not torch.equal(full, sample(merge_env, merge_env["plain"]))


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return float((a - b).abs().max()), float((a - b).norm() / b.norm())


@pytest.mark.parametrize("mode", OFFLOADED)
def test_dense_edge_lora_difference_is_stock_fp16_merge(merge_env, lora_dtype, mode) -> None:
    dense = merge_env["dense"]
    lora_dtype(torch.float32)
    full32 = sample(merge_env, dense)
    assert torch.equal(sample(merge_env, dense, MODES[mode]), full32)  # fp32 merge both ways: no difference
    lora_dtype(torch.float16)
    full16 = sample(merge_env, dense)
    seen: dict = {}
    got16 = sample(merge_env, dense, MODES[mode], seen)
    assert seen["lowvram"] and seen["branches"] == 0, seen
    assert not torch.equal(full16, full32)  # the loaded merge really ran in fp16
    assert not torch.equal(got16, full16), "an offloaded dense layer must merge in its own dtype (LowVramPatch)"
    max_abs, rel = _diff(got16, full16)  # measured: max 9.6e-4, rel 1.5e-4 (H100, fp32 stack: 7.5e-4, 1.5e-4)
    assert rel < 1e-3, (max_abs, rel)
    if mode == "novram":  # every dense layer offloaded: all merged in fp32, exactly the fp32-merged full load
        assert torch.equal(got16, full32)


def test_stock_dense_merge_loaded_vs_offloaded(merge_env, lora_dtype) -> None:
    """Stock code alone, on this model's dense edge weights: the loaded merge (fp16 intermediate)
    and ``LowVramPatch`` (weight dtype) differ by fp16 rounding, and agree with the fp32 setting."""
    import comfy.model_patcher

    patcher = merge_env["dense"].clone()
    keys = sorted(k for k in patcher.patches if k.endswith(".weight"))
    assert keys and all(k[: -len(".weight")] in dense_edge_names() for k in keys), keys
    for dtype, equal in ((torch.float16, False), (torch.float32, True)):
        lora_dtype(dtype)
        for key in keys:
            weight = comfy.model_patcher.get_key_weight(patcher.model, key)[0]
            loaded = patcher.patch_weight_to_device(key, CPU, return_weight=True)
            offloaded = comfy.model_patcher.LowVramPatch(key, patcher.patches)(weight.detach().clone())
            assert loaded.dtype == offloaded.dtype == torch.float32
            assert torch.equal(loaded, offloaded) is equal, (key, dtype, float((loaded - offloaded).abs().max()))
            if not equal:  # fp16 rounding of the merged weight (10-bit mantissa, subnormals below 2**-14)
                bound = weight.abs().max() * 2**-10 + 2**-24
                assert float((loaded - offloaded).abs().max()) <= bound
