"""The packed linear of the real op path (nodes/ops.py in a running ComfyUI): its result is the
runtime's ``lowbit_linear`` on the layer's PackedWeight, and prepared backend data never outlives
the tensors it was built from (new weights through the state dict, buffers swapped the way
dynamic VRAM does, moves). These are the checks the removed ``BonsaiLinear`` had, on the class
ComfyUI actually runs."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def layer_and_pack(comfyui):
    name, _ = comfyui.tiny_model("ternary")
    loader = comfyui.pack("nodes.model_loader")
    dm = loader.load_bonsai_model(comfyui.models_dir / "diffusion_models" / name).model.diffusion_model
    return dm, dm.double_blocks[0].img_attn.qkv, comfyui.pack("bonsai_core")


def _reference(pack, layer, x: torch.Tensor) -> torch.Tensor:
    weight = pack.packing.PackedWeight(layer.codes, layer.scales, layer.bonsai_bits)
    return pack.dispatch.lowbit_linear(x, weight, backend="torch") + (layer.bias if layer.bias is not None else 0)


def test_forward_is_lowbit_linear_and_state_is_prepared_once(layer_and_pack) -> None:
    _, layer, pack = layer_and_pack
    x = torch.randn(2, 5, layer.in_features, dtype=torch.float32)
    y = layer(x)
    assert y.shape == (2, 5, layer.out_features) and y.dtype == x.dtype
    assert torch.allclose(y, _reference(pack, layer, x), rtol=1e-5, atol=1e-5)
    state = layer.bonsai_state
    assert isinstance(state.get("weight"), pack.packing.PackedWeight)  # built once per placement, reused
    weight = state["weight"]
    layer(x)
    assert layer.bonsai_state is state and state["weight"] is weight


def test_new_weights_drop_prepared_state_and_change_the_output(layer_and_pack) -> None:
    _, layer, pack = layer_and_pack
    x = torch.randn(3, layer.in_features)
    y = layer(x)
    assert layer.bonsai_state
    sd = {"weight": layer.codes.flip(0).contiguous(), "weight_scale": layer.scales.flip(0).contiguous()}
    if layer.bias is not None:
        sd["bias"] = layer.bias.detach().clone()
    layer.load_state_dict(sd)
    assert layer.bonsai_state == {}
    y2 = layer(x)
    assert not torch.equal(y2, y)
    assert torch.allclose(y2, _reference(pack, layer, x), rtol=1e-5, atol=1e-5)


def test_buffers_swapped_like_dynamic_vram_drop_prepared_state(layer_and_pack) -> None:
    import comfy.utils

    dm, layer, pack = layer_and_pack
    x = torch.randn(2, layer.in_features)
    layer(x)
    assert layer.bonsai_state
    name = next(n for n, m in dm.named_modules() if m is layer)
    comfy.utils.set_attr_buffer(dm, f"{name}.codes", layer.codes.clone())
    assert layer.bonsai_state == {}
    assert torch.allclose(layer(x), _reference(pack, layer, x), rtol=1e-5, atol=1e-5)
