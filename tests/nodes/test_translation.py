"""Patch -> branch translation, checked against ComfyUI's own merge of the same patches.

For each LoRA key format ComfyUI maps for FLUX.2, the LoRA is loaded with ComfyUI's key map onto a
stock dense tiny Klein model (``comfy.sd.load_lora_for_models``, what LoraLoader calls). For every
packed layer, ``comfy.lora.calculate_weight`` (the stock merge) gives ``W'``; our branches must give
``x @ W'.T`` from ``x @ W.T``. Everything runs in float32, so the tolerance is rounding only.
"""

from __future__ import annotations

import logging

import pytest
import torch
from lora_fixtures import (
    bfl_names,
    diffusers_names,
    kohya_names,
    linear1_qkv_names,
    lora_tensors,
    quantized_shapes,
    single_qkv_slice_names,
    tiny_model_state_dicts,
)

pytestmark = pytest.mark.comfyui

QKEYS = {"diffusion_model." + k: s for k, s in quantized_shapes().items()}


@pytest.fixture(scope="module")
def dense_patcher(lora_mod):
    import comfy.sd

    _, dense = tiny_model_state_dicts(bits=2, seed=3)
    return comfy.sd.load_diffusion_model_state_dict(dense)


def load_with_stock_keymap(patcher, lora: dict[str, torch.Tensor], strength: float, caplog):
    """LoraLoader's path; fails if ComfyUI left any LoRA tensor unused."""
    import comfy.sd

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0.0)
    ignored = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    assert not ignored, ignored
    return patched


def assert_branches_match_merge(lora_mod, lowrank, patched, keys: set[str]) -> None:
    import comfy.lora

    sd = patched.model.state_dict()
    g = torch.Generator().manual_seed(7)
    assert keys, "no packed layer was patched"
    for key in sorted(keys):
        n, k = QKEYS[key]
        w = sd[key].float()
        merged = comfy.lora.calculate_weight(patched.patches[key], w.clone(), key)
        branches = lora_mod.branches_from_patches(key, patched.patches[key], n, k)
        x = torch.randn(3, 5, k, generator=g)
        got = lowrank.apply_low_rank(x, x @ w.T, [b.to(torch.device("cpu"), torch.float32) for b in branches])
        want = x @ merged.T
        assert not torch.equal(merged, w), f"{key}: the LoRA did not change the stock merge"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


FORMATS = {
    # name: (module names, tensor style, alpha)
    "bfl_lora_AB": (bfl_names(), "AB", None),
    "bfl_lora_updown_alpha": (bfl_names(), "updown", 2.0),
    "kohya_lora_unet": (kohya_names(), "updown", 8.0),
    "diffusers_transformer": (diffusers_names(), "AB", None),
    "diffusers_no_prefix": (diffusers_names(prefix=""), "AB", 3.0),
    "onetrainer_lora_transformer": ({"lora_transformer_" + n.replace(".", "_"): s for n, s in diffusers_names(prefix="").items()}, "updown", 4.0),
    "lycoris_prefix": ({"lycoris_" + n.replace(".", "_"): s for n, s in diffusers_names(prefix="").items()}, "updown", None),
    "single_block_qkv_slices": (single_qkv_slice_names(), "AB", None),
    "bfl_linear1_qkv": (linear1_qkv_names(), "updown", 1.0),
    "locon_1x1_mid": (kohya_names(), "locon_mid", 4.0),
    "loha": (kohya_names(), "loha", 2.0),
    "lokr": (kohya_names(), "lokr", 4.0),
    "full_diff": (bfl_names(), "diff", None),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_matches_stock_merge(fmt, lora_mod, lowrank, dense_patcher, caplog):
    names, style, alpha = FORMATS[fmt]
    lora = lora_tensors(names, style, rank=4, seed=11, alpha=alpha)
    patched = load_with_stock_keymap(dense_patcher, lora, 0.8, caplog)
    keys = set(patched.patches) & set(QKEYS)
    assert_branches_match_merge(lora_mod, lowrank, patched, keys)


def test_diffusers_covers_every_packed_layer(lora_mod, dense_patcher, caplog):
    """q/k/v of double blocks are three slices of one fused qkv; all 80-layer equivalents are hit."""
    lora = lora_tensors(diffusers_names(), "AB", seed=2)
    patched = load_with_stock_keymap(dense_patcher, lora, 1.0, caplog)
    assert set(QKEYS) <= set(patched.patches)
    qkv = patched.patches["diffusion_model.double_blocks.0.img_attn.qkv.weight"]
    h = QKEYS["diffusion_model.double_blocks.0.img_attn.qkv.weight"][0] // 3
    assert sorted(p[3] for p in qkv) == [(0, 0, h), (0, h, h), (0, 2 * h, h)]
    branches = lora_mod.branches_from_patches("diffusion_model.double_blocks.0.img_attn.qkv.weight", qkv, 3 * h, h)
    assert sorted((b.offset, b.up.shape[0]) for b in branches) == [(0, h), (h, h), (2 * h, h)]


def test_stacked_loras_and_strengths(lora_mod, lowrank, dense_patcher, caplog):
    """Two LoRAs of different formats on the same layers, each with its own strength, in order."""
    a = lora_tensors(bfl_names(), "AB", seed=5)
    b = lora_tensors(diffusers_names(), "updown", seed=6, alpha=2.0)
    p1 = load_with_stock_keymap(dense_patcher, a, 0.7, caplog)
    p2 = load_with_stock_keymap(p1, b, -1.3, caplog)
    assert all(len(p2.patches[k]) >= 2 for k in QKEYS)
    assert_branches_match_merge(lora_mod, lowrank, p2, set(QKEYS))


def test_loha_is_low_rank_not_dense(lora_mod, dense_patcher, caplog):
    """LoHa becomes a branch of rank r1*r2 (Khatri-Rao), not a dense delta."""
    key = "diffusion_model.single_blocks.0.linear2.weight"
    n, k = QKEYS[key]
    lora = lora_tensors({"lora_unet_single_blocks_0_linear2": (n, k)}, "loha", rank=3, alpha=3.0)
    patched = load_with_stock_keymap(dense_patcher, lora, 1.0, caplog)
    (b,) = lora_mod.branches_from_patches(key, patched.patches[key], n, k)
    assert b.down.shape == (9, k) and b.up.shape == (n, 9)


def test_strength_model_scales_the_base(lora_mod, lowrank, dense_patcher):
    """add_patches(strength_model != 1) (model-merge / attention-multiply nodes) scales the slice first."""
    import comfy.lora

    key = "diffusion_model.double_blocks.0.txt_attn.qkv.weight"
    n, k = QKEYS[key]
    h = n // 3
    p = dense_patcher.clone()
    lora = lora_tensors({"x": (h, k)}, "AB", seed=9)
    adapter = comfy.lora.load_lora(lora, {"x": (key, (0, h, h))})
    p.add_patches({(key, (0, h, h)): adapter[(key, (0, h, h))]}, 0.5, 0.25)
    p.add_patches({key: (None,)}, 0.0, 2.0)  # what AttentionMultiply adds: a pure weight scale
    w = p.model.state_dict()[key].float()
    merged = comfy.lora.calculate_weight(p.patches[key], w.clone(), key)
    x = torch.randn(4, k)
    got = lowrank.apply_low_rank(x, x @ w.T, lora_mod.branches_from_patches(key, p.patches[key], n, k))
    torch.testing.assert_close(got, x @ merged.T, rtol=1e-5, atol=1e-5)


def test_unsupported_patches_are_refused(lora_mod, dense_patcher, caplog):
    import comfy.lora

    key = "diffusion_model.double_blocks.0.img_mlp.2.weight"
    n, k = QKEYS[key]
    dora = lora_tensors({"m": (n, k)}, "updown", seed=4)
    dora["m.dora_scale"] = torch.ones(n, 1)
    cases = {
        "DoRA": comfy.lora.load_lora(dora, {"m": key})[key],
        "'set' patches": ("set", (torch.zeros(n, k),)),
        "model merging": [(torch.zeros(n, k), lambda a, **kw: a)],
    }
    oft = {"m.oft_blocks": torch.zeros(4, k // 4, k // 4), "m.alpha": torch.tensor(1.0)}
    oft_adapter = comfy.lora.load_lora(oft, {"m": key}, log_missing=False).get(key)
    if oft_adapter is not None:
        cases["OFTAdapter"] = oft_adapter
    for what, v in cases.items():
        with pytest.raises(lora_mod.BonsaiLoraError, match=key.replace(".", r"\.")) as e:
            lora_mod.branches_from_patches(key, [(1.0, v, 1.0, None, None)], n, k)
        assert "Bonsai" in str(e.value), what


def test_mismatched_lora_is_logged_like_stock(lora_mod, caplog):
    """A LoRA for another model size: stock ComfyUI logs and skips the layer; so do we."""
    import comfy.lora

    key = "diffusion_model.double_blocks.0.img_mlp.2.weight"
    n, k = QKEYS[key]
    wrong = lora_tensors({"m": (n * 2, k)}, "AB", seed=4)
    adapter = comfy.lora.load_lora(wrong, {"m": key})[key]
    with caplog.at_level(logging.ERROR):
        assert lora_mod.branches_from_patches(key, [(1.0, adapter, 1.0, None, None)], n, k) == []
    assert any(key in r.getMessage() for r in caplog.records)
