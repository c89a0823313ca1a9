"""Stock LoraLoader / LoraLoaderModelOnly on a Bonsai MODEL vs stock ComfyUI on the dequantized model.

Reference: ``UNETLoader`` on the same model dequantized to a dense bf16 file, with the same LoRA
file through the same stock node; ComfyUI merges it into the dense weights (float32 on CPU). Ours:
``BonsaiModelLoader``'s patcher, codes untouched, LoRA as branches. Outputs agree to float32
rounding: |diff| <= 1e-4 for outputs of magnitude ~1 (measured: ~3e-7).
"""

from __future__ import annotations

import logging

import pytest
import safetensors.torch
import torch
from lora_fixtures import (
    bfl_names,
    dense_edge_names,
    diffusers_names,
    kohya_names,
    linear1_qkv_names,
    lora_tensors,
    single_qkv_slice_names,
)

from bonsai_core.canonical import save_canonical
from bonsai_core.packing import PackedWeight
from bonsai_tools.synth import synthetic_checkpoint

pytestmark = pytest.mark.comfyui

TOL = {"rtol": 1e-4, "atol": 1e-4}
NAME = "bonsai_lora_tiny"


@pytest.fixture(scope="module")
def files(comfyui, comfy_models):
    """(canonical file, dense bf16 file) of one tiny binary model, in the session's diffusion_models/."""
    ckpt = synthetic_checkpoint("binary", "tiny", seed=21)
    folder = comfy_models / "diffusion_models"
    canonical = folder / f"{NAME}.safetensors"
    save_canonical(ckpt, canonical)
    dense = {}
    for key, value in ckpt.items():
        dense[key] = value.dequantize(torch.float32).to(torch.bfloat16) if isinstance(value, PackedWeight) else value
    safetensors.torch.save_file(dense, folder / f"{NAME}_dense.safetensors")
    return canonical.name, f"{NAME}_dense.safetensors"


@pytest.fixture(scope="module")
def stock(comfyui):
    return comfyui.nodes


@pytest.fixture(scope="module")
def bonsai_model(comfyui, comfy_models, files):
    return comfyui.pack("nodes.model_loader").load_bonsai_model(comfy_models / "diffusion_models" / files[0], "auto", "fp32")


@pytest.fixture(scope="module")
def dense_model(stock, files):
    return stock.UNETLoader().load_unet(files[1], "default")[0]


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 128, 8, 8, generator=g), torch.tensor([0.6]), torch.randn(1, 7, 384, generator=g)


def write_lora(comfy_models, name: str, tensors: dict[str, torch.Tensor]) -> str:
    safetensors.torch.save_file(tensors, comfy_models / "loras" / f"{name}.safetensors")
    return f"{name}.safetensors"


def run(patcher, inputs) -> torch.Tensor:
    import comfy.model_management as mm

    x, t, ctx = inputs
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.apply_model(x, t, c_crossattn=ctx).clone()


def packed_layers(patcher) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in patcher.model.named_modules() if getattr(m, "codes", None) is not None}


def buffer_identity(patcher) -> dict[str, tuple[int, int]]:
    return {n: (m.codes.data_ptr(), m.scales.data_ptr()) for n, m in packed_layers(patcher).items()}


LORAS = {
    "bfl_AB_plus_dense_edges": lambda: {**lora_tensors(bfl_names(), "AB", seed=1), **lora_tensors(dense_edge_names(), "AB", seed=2)},
    "kohya_alpha": lambda: lora_tensors(kohya_names(), "updown", seed=3, alpha=2.0),
    "diffusers_qkv_slices": lambda: lora_tensors(diffusers_names(), "AB", seed=4),
    "single_qkv_slices_and_linear1_qkv": lambda: {
        **lora_tensors(single_qkv_slice_names(), "AB", seed=5),
        **lora_tensors(linear1_qkv_names(), "updown", seed=6, alpha=1.0),
    },
    "loha": lambda: lora_tensors(kohya_names(), "loha", seed=7, alpha=2.0),
}


@pytest.mark.parametrize("fmt", sorted(LORAS))
def test_stock_lora_loader_matches_dense(fmt, stock, bonsai_model, dense_model, comfy_models, inputs, caplog):
    name = write_lora(comfy_models, f"lora_{fmt}", LORAS[fmt]())
    with caplog.at_level(logging.WARNING):
        b = stock.LoraLoader().load_lora(bonsai_model, None, name, 0.8, 0.0)[0]
        d = stock.LoraLoader().load_lora(dense_model, None, name, 0.8, 0.0)[0]
    ignored = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not ignored, ignored
    base = run(dense_model, inputs)
    want = run(d, inputs)
    got = run(b, inputs)
    assert (want - base).abs().mean() > 1e-3, "the LoRA must visibly change the output"
    torch.testing.assert_close(got, want, **TOL)
    assert any(m.bonsai_lora for m in packed_layers(b).values())


def test_stack_strength_change_and_removal_without_reload(stock, bonsai_model, dense_model, comfy_models, inputs):
    a = write_lora(comfy_models, "stack_a", lora_tensors(bfl_names(), "AB", seed=11))
    c = write_lora(comfy_models, "stack_c", lora_tensors(diffusers_names(), "updown", seed=12, alpha=4.0))
    only = stock.LoraLoaderModelOnly()
    ids = buffer_identity(bonsai_model)
    size = bonsai_model.model_size()

    def both(model, sa: float, sc: float):
        return only.load_lora_model_only(only.load_lora_model_only(model, a, sa)[0], c, sc)[0]

    base_b = run(bonsai_model, inputs)
    for sa, sc in ((0.6, -0.4), (1.3, 0.2), (0.0, 0.9)):
        got = run(both(bonsai_model, sa, sc), inputs)
        torch.testing.assert_close(got, run(both(dense_model, sa, sc), inputs), **TOL)
        assert buffer_identity(bonsai_model) == ids, "base codes/scales were reloaded or copied"
    # LoRA removed: the plain MODEL again gives exactly the base output, with no branches left
    assert torch.equal(run(bonsai_model, inputs), base_b)
    assert not any(m.bonsai_lora for m in packed_layers(bonsai_model).values())
    torch.testing.assert_close(base_b, run(dense_model, inputs), **TOL)
    assert bonsai_model.model_size() == size and buffer_identity(bonsai_model) == ids


def test_switching_between_clones(stock, bonsai_model, dense_model, comfy_models, inputs):
    """Two LoRA'd clones of one model used alternately: each load re-attaches its own branches."""
    name = write_lora(comfy_models, "switch", lora_tensors(kohya_names(), "updown", seed=13, alpha=4.0))
    only = stock.LoraLoaderModelOnly()
    b1, b2 = (only.load_lora_model_only(bonsai_model, name, s)[0] for s in (0.5, -1.0))
    want1, want2 = (run(only.load_lora_model_only(dense_model, name, s)[0], inputs) for s in (0.5, -1.0))
    for _ in range(2):
        torch.testing.assert_close(run(b1, inputs), want1, **TOL)
        torch.testing.assert_close(run(b2, inputs), want2, **TOL)
    # a clone without weight changes (what ModelSampling* nodes make) keeps the branches of its parent
    same = b2.clone()
    torch.testing.assert_close(run(same, inputs), want2, **TOL)


def test_memory_is_the_lora_weights_only(stock, bonsai_model, comfy_models, inputs, lora_mod):
    rank = 8
    name = write_lora(comfy_models, "mem", lora_tensors(bfl_names(), "AB", rank=rank, seed=14))
    b = stock.LoraLoaderModelOnly().load_lora_model_only(bonsai_model, name, 1.0)[0]
    run(b, inputs)
    layers = packed_layers(b)
    expected = 0
    for m in layers.values():
        n, k = m.out_features, m.in_features
        assert "weight" not in dict(m.named_parameters()), "a packed layer grew a weight Parameter"
        w = m.weight  # the packed view ComfyUI's generic code reads: logical shape, packed bytes
        assert tuple(w.shape) == (n, k) and w.nbytes == m.codes.nbytes and w._qdata is m.codes
        (br,) = m.bonsai_lora
        assert br.down.shape == (rank, k) and br.up.shape == (n, rank)
        expected += rank * (n + k) * 4  # float32 on CPU
        tensors = [t for t in m.__dict__.values() if isinstance(t, torch.Tensor)] + list(m.parameters()) + list(m.buffers())
        assert all(t.numel() < n * k for t in tensors), "a dense [N, K] tensor is attached to a packed layer"
    assert lora_mod.lora_nbytes(b.model) == expected
    assert b.model_size() == bonsai_model.model_size()


def test_lowvram_and_partial_unload(stock, bonsai_model, comfy_models, inputs, lora_mod):
    """Offloaded layers get ComfyUI's LowVramPatch in weight_function; it must not double-apply."""
    import comfy.model_management as mm
    import comfy.model_patcher

    name = write_lora(comfy_models, "lowvram", lora_tensors(diffusers_names(), "AB", seed=15))
    b = stock.LoraLoaderModelOnly().load_lora_model_only(bonsai_model, name, 0.9)[0]
    want = run(b, inputs)
    cpu = torch.device("cpu")
    x, t, ctx = inputs

    def lowvram_patches(p) -> int:
        return sum(isinstance(f, comfy.model_patcher.LowVramPatch) for m in packed_layers(p).values() for f in m.weight_function)

    mm.unload_all_models()
    # 1) lowvram load: everything offloaded (1 byte budget)
    b.patch_model(device_to=cpu, lowvram_model_memory=1)
    try:
        assert lowvram_patches(b) > 0
        with torch.no_grad():
            torch.testing.assert_close(b.model.apply_model(x, t, c_crossattn=ctx), want, **TOL)
    finally:
        b.unpatch_model(cpu)
    # 2) full load, then partially unloaded (appends LowVramPatch without another ON_LOAD)
    b.patch_model(device_to=cpu, lowvram_model_memory=0)
    try:
        b.partially_unload(cpu, memory_to_free=1e30)
        assert lowvram_patches(b) > 0
        with torch.no_grad():
            torch.testing.assert_close(b.model.apply_model(x, t, c_crossattn=ctx), want, **TOL)
    finally:
        b.unpatch_model(cpu)
    # 3) a patcher that never got install_lora_support: the lowvram resolver alone applies the LoRA
    bare = b.clone()
    from comfy.patcher_extension import CallbacksMP

    for ct in (CallbacksMP.ON_LOAD, CallbacksMP.ON_DETACH):
        bare.remove_callbacks_with_key(ct, lora_mod.CALLBACK_KEY)
    lora_mod.clear_lora_branches(bare.model)  # as if the callbacks had never run on this model
    bare.patch_model(device_to=cpu, lowvram_model_memory=1)
    try:
        assert not any(m.bonsai_lora for m in packed_layers(bare).values())
        with torch.no_grad():
            torch.testing.assert_close(bare.model.apply_model(x, t, c_crossattn=ctx), want, **TOL)
    finally:
        bare.unpatch_model(cpu)


def test_sampled_latents_match(stock, bonsai_model, dense_model, comfy_models):
    import comfy.sample

    name = write_lora(comfy_models, "sample", {**lora_tensors(diffusers_names(), "AB", seed=16), **lora_tensors(dense_edge_names(), "AB", seed=17)})
    only = stock.LoraLoaderModelOnly()
    g = torch.Generator().manual_seed(3)
    latent = torch.zeros(1, 128, 8, 8)
    noise = torch.randn(1, 128, 8, 8, generator=g)
    cond = [[torch.randn(1, 7, 384, generator=g), {}]]

    def sample(model):
        return comfy.sample.sample(model, noise, 3, 1.0, "euler", "simple", cond, cond, latent, seed=0, disable_pbar=True)

    got = sample(only.load_lora_model_only(bonsai_model, name, 0.75)[0])
    want = sample(only.load_lora_model_only(dense_model, name, 0.75)[0])
    base = sample(dense_model)
    assert (want - base).abs().mean() > 1e-3
    torch.testing.assert_close(got, want, **TOL)


def test_unsupported_lora_fails_with_one_clear_error(stock, bonsai_model, comfy_models, inputs, lora_mod):
    n, k = 256, 256
    dora = lora_tensors({"diffusion_model.double_blocks.0.img_attn.proj": (n, k)}, "AB", seed=18)
    dora["diffusion_model.double_blocks.0.img_attn.proj.dora_scale"] = torch.ones(n, 1)
    name = write_lora(comfy_models, "dora", dora)
    b = stock.LoraLoaderModelOnly().load_lora_model_only(bonsai_model, name, 1.0)[0]
    with pytest.raises(lora_mod.BonsaiLoraError, match=r"double_blocks\.0\.img_attn\.proj.*DoRA"):
        run(b, inputs)
