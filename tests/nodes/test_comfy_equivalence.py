"""Our MODEL vs stock UNETLoader on the dequantized file, and BonsaiSampler vs the stock Klein graph.

Tolerance: on CPU in fp32 the torch backend dequantizes to the exact weights the dense file holds
(every value is +-s or 0 with s exact in bf16) and runs the same F.linear, so latents must agree to
max|a - b| <= 1e-5 * max|b| (relative to the latent range); in practice they are bit-identical.
"""

from __future__ import annotations

import pytest
import torch
from harness.graphs import bonsai_loader, ksampler, recipe, recipe_from_latent, stock_klein, unet_loader

pytestmark = pytest.mark.comfyui

VARIANTS = ["binary", "ternary"]
RTOL = 1e-5


def _latent(comfyui, prompt):
    r = comfyui.run(prompt)
    assert r.valid, r.node_errors
    assert r.success, r.error and r.error["exception_message"]
    z = r.latent()
    assert torch.isfinite(z).all()
    return z


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= rtol * scale, f"max |a-b| = {err:.3g}, max |b| = {scale:.3g}, tolerance {rtol:g} relative"


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_latents_as_stock_unet_loader(comfyui, variant):
    canonical, dense = comfyui.tiny_model(variant)
    ours = _latent(comfyui, stock_klein(bonsai_loader(canonical), steps=3))
    stock = _latent(comfyui, stock_klein(unet_loader(dense), steps=3))
    assert_close(ours, stock)


@pytest.mark.parametrize("variant", VARIANTS)
def test_recipe_node_equals_stock_klein_graph(comfyui, variant):
    canonical, _ = comfyui.tiny_model(variant)
    w, h = (96, 48) if variant == "binary" else (64, 80)
    node = _latent(comfyui, recipe(bonsai_loader(canonical), width=w, height=h, batch=2))
    graph = _latent(comfyui, stock_klein(bonsai_loader(canonical), width=w, height=h, batch=2))
    assert node.shape == (2, 128, h // 16, w // 16)
    assert torch.equal(node, graph)


def test_recipe_sized_by_connected_latent(comfyui):
    canonical, _ = comfyui.tiny_model("binary")
    from_latent = _latent(comfyui, recipe_from_latent(bonsai_loader(canonical), width=96, height=64, batch=2))
    from_size = _latent(comfyui, recipe(bonsai_loader(canonical), width=96, height=64, batch=2))
    assert from_latent.shape == (2, 128, 4, 6)
    assert torch.equal(from_latent, from_size)


def test_recipe_progress_bar_and_seed(comfyui, monkeypatch):
    # ComfyUI's ProgressBar always sends the first and the last step but drops steps that come less than
    # PROGRESS_THROTTLE_MIN_INTERVAL (100 ms) after the last one sent. Tiny-model steps take ~40 ms on a
    # quiet machine (so only [(1, 4), (4, 4)] arrived) and longer on a busy one: turn the time throttle
    # off so every step the sampler reports is seen, whatever the machine's speed.
    import comfy.utils

    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0)
    canonical, _ = comfyui.tiny_model("binary")
    a = _latent(comfyui, recipe(bonsai_loader(canonical), seed=1))
    assert [p[:2] for p in comfyui.progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {p[2] for p in comfyui.progress} == {"3"}  # the BonsaiSampler node id
    b = _latent(comfyui, recipe(bonsai_loader(canonical), seed=2))
    assert not torch.equal(a, b)
    assert torch.equal(a, _latent(comfyui, recipe(bonsai_loader(canonical), seed=1)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_ksampler_same_as_stock(comfyui, variant):
    canonical, dense = comfyui.tiny_model(variant)
    assert_close(_latent(comfyui, ksampler(bonsai_loader(canonical), steps=2)), _latent(comfyui, ksampler(unet_loader(dense), steps=2)))


def test_reference_latent_edit_same_as_stock(comfyui):
    canonical, dense = comfyui.tiny_model("ternary")
    ours = _latent(comfyui, recipe(bonsai_loader(canonical), reference_seed=5, steps=2))
    stock = _latent(comfyui, stock_klein(unet_loader(dense), reference_seed=5, steps=2))
    assert_close(ours, stock)
    plain = _latent(comfyui, recipe(bonsai_loader(canonical), steps=2))
    assert (ours - plain).abs().max() > 1e-3  # the reference tokens reach the model


@pytest.mark.parametrize("dtype_name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_compute_dtype_option(comfyui, dtype_name, dtype):
    canonical, _ = comfyui.tiny_model("binary")
    loader = comfyui.pack("nodes.model_loader")
    patcher = loader.load_bonsai_model(comfyui.models_dir / "diffusion_models" / canonical, compute_dtype=dtype_name)
    dm = patcher.model.diffusion_model
    assert patcher.model.get_dtype() == dtype and dm.img_in.weight.dtype == dtype
    assert dm.double_blocks[0].img_attn.qkv.scales.dtype == torch.float16  # packed scales are never recast
    inference = patcher.model.get_dtype_inference()  # ComfyUI casts to fp32 where the device cannot compute in dtype
    low = _latent(comfyui, recipe(bonsai_loader(canonical, compute_dtype=dtype_name), steps=2))
    fp32 = _latent(comfyui, recipe(bonsai_loader(canonical, compute_dtype="fp32"), steps=2))
    if inference == torch.float32 and dtype == torch.bfloat16:
        assert torch.equal(low, fp32)  # fp32 compute on bf16-exact weights: nothing is rounded
    else:
        assert_close(low, fp32, rtol=5e-2)  # fp16 storage rounds small edge weights / low-precision compute
