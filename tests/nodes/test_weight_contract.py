"""What ComfyUI's generic code may do with ``module.weight`` of a packed Bonsai layer.

Every packed linear shows a ``weight`` (nodes/packed_weight.py): a comfy-kitchen ``QuantizedTensor``
view of its own codes/scales with the logical ``[out, in]`` shape. These tests run the generic
operations ComfyUI's model patcher, LoRA and save code perform on ``module.weight`` (0.29 and the
newer releases read in docs/COMPAT.md) against the real layer class: shape queries
(``comfy.lora.calculate_shape``), casting (``cast_to_device``), ``.to(device)``, dequantization
(``convert_weight``) and merging (``comfy.lora.calculate_weight``), backup and restore
(``set_attr_param``), the state-dict round trip, and ``module_size`` accounting.
"""

from __future__ import annotations

import pytest
import torch
from lora_fixtures import bfl_names, lora_tensors

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def model(comfyui):
    name, _ = comfyui.tiny_model("ternary")
    return comfyui.pack("nodes.model_loader").load_bonsai_model(comfyui.models_dir / "diffusion_models" / name, "auto", "fp32")


@pytest.fixture(scope="module")
def pack(comfyui):
    return comfyui.pack("bonsai_core"), comfyui.pack("nodes.ops"), comfyui.pack("nodes.packed_weight")


def _packed(model, ops) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in ops.bonsai_linears(model.model.diffusion_model) if m.is_packed}


def test_no_packed_layer_has_weight_none(model, pack) -> None:
    from comfy.quant_ops import QuantizedTensor

    core, ops, pw = pack
    layers = _packed(model, ops)
    assert layers
    for name, m in layers.items():
        w = m.weight
        assert w is not None, name
        assert isinstance(w, QuantizedTensor) and pw.is_packed_view(w)
        assert tuple(w.shape) == (m.out_features, m.in_features) and w.dtype == torch.float32
        assert w.device == m.codes.device and w._qdata is m.codes and w.nbytes == m.codes.nbytes
        assert "weight" not in dict(m.named_parameters())  # stock merge loops never see it


def test_dequantize_is_the_one_formula_bit_exact(model, pack) -> None:
    core, ops, _ = pack
    for m in list(_packed(model, ops).values())[:4]:
        want = core.packing.PackedWeight(m.codes, m.scales, m.bonsai_bits).dequantize(torch.float32)
        assert torch.equal(m.weight.dequantize(), want)
        assert torch.equal(m.convert_weight(m.weight, inplace=True), want)  # ComfyUI's convert_func
        half = m.weight.to(torch.bfloat16)  # a label change: the same packed bytes and scales
        assert half.dtype == torch.bfloat16 and torch.equal(half._qdata, m.codes) and half.nbytes == m.codes.nbytes
        assert torch.equal(half.dequantize(), core.packing.PackedWeight(m.codes, m.scales, m.bonsai_bits).dequantize(torch.bfloat16))


def test_linear_with_the_view_runs_the_packed_product(model, pack) -> None:
    core, ops, _ = pack
    m = model.model.diffusion_model.double_blocks[0].img_attn.qkv
    x = torch.randn(3, m.in_features)
    y = torch.nn.functional.linear(x, m.weight, m.bias)
    assert torch.equal(y, m(x))


def test_moves_and_casts_keep_bytes_packed(model, pack) -> None:
    import comfy.model_management

    _, ops, pw = pack
    m = model.model.diffusion_model.single_blocks[0].linear2
    moved = m.weight.to("cpu", copy=True)
    assert pw.is_packed_view(moved) and moved._qdata is not m.codes and torch.equal(moved._qdata, m.codes)
    cast = comfy.model_management.cast_to_device(m.weight, torch.device("cpu"), torch.float32, copy=True)
    assert pw.is_packed_view(cast) and cast.nbytes == m.codes.nbytes
    assert torch.equal(cast.dequantize(), m.weight.dequantize())
    param = torch.nn.Parameter(m.weight, requires_grad=False)  # what set_attr_param wraps
    assert pw.is_packed_view(param) and tuple(param.shape) == tuple(m.weight.shape)


def test_in_place_writes_on_the_view_are_refused(model, pack) -> None:
    _, ops, pw = pack
    m = model.model.diffusion_model.single_blocks[0].linear2
    w = m.weight
    with pytest.raises(pw.PackedWeightWriteError):
        w += 1.0
    with pytest.raises(pw.PackedWeightWriteError):
        m.weight.mul_(2.0)
    with pytest.raises(pw.PackedWeightWriteError):
        m.set_weight(m.weight.dequantize(), inplace_update=True)  # weight hooks
    with pytest.raises(pw.PackedWeightWriteError):
        m.weight.requantize_from_float(m.weight.dequantize())


def test_calculate_shape_and_calculate_weight_on_the_view(comfyui, model, pack, comfy_models) -> None:
    """The merge ComfyUI's patch_weight_to_device performs, on our weight: cast -> convert -> calculate."""
    import comfy.lora
    import comfy.model_management
    import safetensors.torch

    _, ops, _ = pack
    names = {k: v for k, v in bfl_names().items() if "single_blocks.0.linear2" in k or "double_blocks.0.img_attn.qkv" in k}
    lora_file = comfy_models / "loras" / "contract.safetensors"
    safetensors.torch.save_file(lora_tensors(names, "AB", seed=3), lora_file)
    patched = comfyui.nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_file.name, 0.7)[0]
    assert patched.patches
    for key, patches in patched.patches.items():
        if not key.endswith(".weight") or key.startswith("diffusion_model.img_in"):
            continue
        m = comfy.utils.get_attr(patched.model, key[: -len(".weight")])
        assert comfy.lora.calculate_shape(patches, m.weight, key) == m.weight.shape
        temp = comfy.model_management.cast_to_device(m.weight, torch.device("cpu"), torch.float32, copy=True)
        temp = m.convert_weight(temp, inplace=True)
        merged = comfy.lora.calculate_weight(patches, temp, key)
        base = m.weight.dequantize()
        assert merged.shape == base.shape and not torch.equal(merged, base)
        # the layer's unmerged branches give what the merged dense weight gives
        patched.patch_model(torch.device("cpu"))
        try:
            x = torch.randn(2, m.in_features)
            torch.testing.assert_close(m(x), torch.nn.functional.linear(x, merged, m.bias), rtol=1e-4, atol=1e-4)
            assert m.set_weight(merged) is None and m.set_weight(merged, return_weight=True)._qdata is m.codes
        finally:
            patched.detach()  # unpatch + the ON_DETACH callback that drops the branches


def test_backup_and_restore_through_set_attr_param(model, pack) -> None:
    import comfy.utils

    _, ops, pw = pack
    key = "diffusion_model.single_blocks.1.linear1.weight"
    m = comfy.utils.get_attr(model.model, key[: -len(".weight")])
    x = torch.randn(2, m.in_features)
    y = m(x)
    backup = m.weight.to(device="cpu", copy=True)  # what patch_weight_to_device keeps
    comfy.utils.set_attr_param(model.model, key, backup)
    assert m.codes.data_ptr() == backup._qdata.data_ptr() and "weight" not in dict(m.named_parameters())
    assert torch.equal(m(x), y)
    with pytest.raises(pw.PackedWeightWriteError):
        comfy.utils.set_attr_param(model.model, key, m.weight.dequantize())


def test_state_dict_round_trip_and_module_size(comfyui, model, pack) -> None:
    import comfy.model_management

    core, ops, _ = pack
    dm = model.model.diffusion_model
    m = dm.double_blocks[0].img_attn.qkv
    sd = m.state_dict()
    assert {"weight", "weight_scale"} <= set(sd) <= {"weight", "weight_scale", "bias"} and torch.equal(sd["weight"], m.codes)
    view_sd = m.weight.state_dict("weight")  # the QuantizedTensor's own keys = the layer's keys
    assert set(view_sd) == {"weight", "weight_scale"} and view_sd["weight"] is m.codes
    bias = m.bias.nbytes if m.bias is not None else 0
    assert comfy.model_management.module_size(m) == m.codes.nbytes + m.scales.nbytes + bias
    twin = type(m)(m.in_features, m.out_features, bias=m.bias is not None, dtype=torch.float32)
    twin.load_state_dict({k: v.clone() for k, v in sd.items()})
    x = torch.randn(2, m.in_features)
    assert torch.equal(twin(x), m(x)) and torch.equal(twin.weight.dequantize(), m.weight.dequantize())
    full = sum(t.nbytes for t in dm.state_dict().values())
    assert model.model_size() == comfy.model_management.module_size(model.model) and model.model_size() >= full
    layers = _packed(model, ops).values()
    packed = sum(comfy.model_management.module_size(m) for m in layers)
    dense = sum(m.out_features * m.in_features * 4 for m in layers)
    assert packed < dense / 8  # packed bytes, not the dense weights the views describe
