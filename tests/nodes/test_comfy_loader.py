"""BonsaiModelLoader on tiny canonical fixtures of both variants, snapshot folders, and bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from harness.graphs import bonsai_loader, recipe

pytestmark = pytest.mark.comfyui

VARIANTS = ["binary", "ternary"]


@pytest.fixture(scope="module")
def loader_mod(comfyui):
    return comfyui.pack("nodes.model_loader")


@pytest.mark.parametrize("variant", VARIANTS)
def test_loads_packed_stock_model(comfyui, loader_mod, variant):
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher

    name, _ = comfyui.tiny_model(variant)
    patcher = loader_mod.load_bonsai_model(comfyui.models_dir / "diffusion_models" / name)
    assert type(patcher) is comfy.model_patcher.ModelPatcher  # CoreModelPatcher on CPU
    assert isinstance(patcher.model, comfy.model_base.Flux2)
    dm = patcher.model.diffusion_model
    ops = comfyui.pack("nodes.ops")
    layers = dict(ops.bonsai_linears(dm))
    packed = {n: m for n, m in layers.items() if m.is_packed}
    bits = 1 if variant == "binary" else 2
    # tiny: 1 double block (8 linears) + 2 single blocks (2 each); the 9 edge linears stay dense
    assert len(packed) == 12 and len(layers) == 21
    assert all(m.bonsai_bits == bits and m.codes.dtype == torch.uint8 for m in packed.values())
    # no dense weight Parameter; ``weight`` is the packed view with the logical shape (nodes/packed_weight.py)
    assert all(
        "weight" not in dict(m.named_parameters()) and tuple(m.weight.shape) == (m.out_features, m.in_features) for m in packed.values()
    )

    sd = dm.state_dict()
    for n, m in packed.items():
        assert sd[f"{n}.weight"].dtype == torch.uint8 and f"{n}.weight_scale" in sd
        assert sd[f"{n}.weight"].shape == (m.out_features, m.in_features * bits // 8)
    assert not [k for k in sd if k.endswith((".codes", ".scales"))]
    # VRAM accounting counts packed bytes: state_dict bytes == codes + scales + dense tensors.
    expected = sum(m.codes.nbytes + m.scales.nbytes for m in packed.values())
    expected += sum(p.nbytes for p in dm.parameters()) + sum(
        b.nbytes for n, b in dm.named_buffers() if not n.endswith((".codes", ".scales"))
    )
    assert comfy.model_management.module_size(dm) == expected
    dense_equiv = sum(m.out_features * m.in_features * 4 for m in packed.values())
    packed_bytes = sum(m.codes.nbytes + m.scales.nbytes for m in packed.values())
    assert packed_bytes * 8 < dense_equiv  # >= 8x smaller than fp32 even at 2 bits with scales


def test_buffers_follow_to_and_scales_keep_their_dtype(comfyui, loader_mod):
    name, _ = comfyui.tiny_model("ternary")
    dm = loader_mod.load_bonsai_model(comfyui.models_dir / "diffusion_models" / name).model.diffusion_model
    layer = dm.double_blocks[0].img_attn.qkv
    scale_dtype = layer.scales.dtype
    layer.bonsai_state["prepared"] = object()
    dm.to(torch.bfloat16)  # casts dense weights; scales must not be rounded
    assert layer.scales.dtype == scale_dtype and layer.codes.dtype == torch.uint8
    assert layer.bonsai_state == {}  # prepared backend data is dropped on every move
    assert dm.img_in.weight.dtype == torch.bfloat16
    dm.to("meta")
    assert layer.codes.device.type == "meta" and layer.scales.device.type == "meta"


def test_combo_lists_canonical_files_and_snapshot_folders(comfyui, loader_mod):
    canonical, dense = comfyui.tiny_model("binary")
    fixtures = comfyui.pack("bonsai_tools.synth")
    fixtures.make_fixture("binary", "tiny", "gemlite", 0, comfyui.models_dir / "bonsai" / "tiny-binary-gemlite")
    options = comfyui.node_class("BonsaiModelLoader").GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    assert canonical in options
    assert dense not in options  # a dense model belongs to the stock loader
    assert "tiny-binary-gemlite/" in options


def test_snapshot_folder_packs_on_the_fly_to_the_same_model(comfyui):
    canonical, _ = comfyui.tiny_model("binary")
    fixtures = comfyui.pack("bonsai_tools.synth")
    folder = comfyui.models_dir / "bonsai" / "tiny-binary-gemlite"
    if not folder.exists():
        fixtures.make_fixture("binary", "tiny", "gemlite", 0, folder)
    a = comfyui.run(recipe(bonsai_loader(canonical)))
    b = comfyui.run(recipe(bonsai_loader("tiny-binary-gemlite/")))
    assert a.success and b.success, (a.error, b.error, b.node_errors)
    assert torch.equal(a.latent(), b.latent())


def _write_random_safetensors(path):
    from safetensors.torch import save_file

    save_file({"model.layers.0.weight": torch.randn(16, 16)}, str(path))


def _truncate_copy(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize(
    "kind, expect",
    [
        ("random_safetensors", "not a canonical Bonsai file"),
        ("truncated_canonical", "truncated"),
        ("not_safetensors", "safetensors"),
        ("missing", "not found"),
    ],
)
def test_bad_file_is_a_readable_validation_error(comfyui, kind, expect):
    canonical, _ = comfyui.tiny_model("binary")
    d = comfyui.models_dir / "diffusion_models"
    name = f"bad-{kind}.safetensors"
    if kind == "random_safetensors":
        _write_random_safetensors(d / name)
    elif kind == "truncated_canonical":
        _truncate_copy(d / canonical, d / name)
    elif kind == "not_safetensors":
        (d / name).write_bytes(b"<html>404 Not Found</html>" * 10)
    try:
        r = comfyui.run(recipe(bonsai_loader(name)))
        assert not r.valid
        errors = r.node_errors["1"]["errors"]
        assert len(errors) == 1
        details = errors[0]["details"]
        assert name in details and expect in details, details
        assert "Traceback" not in details and 'File "' not in details
    finally:
        (d / name).unlink(missing_ok=True)


def test_unavailable_backend_is_a_readable_execution_error(comfyui):
    canonical, _ = comfyui.tiny_model("binary")
    r = comfyui.run(recipe(bonsai_loader(canonical, backend="gemlite")))
    assert r.valid and not r.success
    err = r.error
    assert err["node_id"] == "1" and err["exception_type"].endswith("BonsaiFormatError")
    assert "backend 'gemlite' cannot run" in err["exception_message"] and canonical in err["exception_message"]


def test_direct_load_of_truncated_file_names_file(comfyui, loader_mod, tmp_path):
    canonical, _ = comfyui.tiny_model("ternary")
    bad = tmp_path / "cut.safetensors"
    _truncate_copy(comfyui.models_dir / "diffusion_models" / canonical, bad)
    errors = comfyui.pack("bonsai_core.errors")
    with pytest.raises(errors.BonsaiFormatError) as e:
        loader_mod.load_bonsai_model(bad)
    assert str(bad) in str(e.value)
    # The copy of a good file loads.
    shutil.copy(comfyui.models_dir / "diffusion_models" / canonical, bad)
    assert loader_mod.load_bonsai_model(bad) is not None


def test_unresolved_weight_function_on_packed_layer_is_an_error(comfyui, loader_mod):
    """ComfyUI's dense-weight patches must never be applied to packed codes, nor silently dropped."""
    ops = comfyui.pack("nodes.ops")
    name, _ = comfyui.tiny_model("binary")
    layer = loader_mod.load_bonsai_model(comfyui.models_dir / "diffusion_models" / name).model.diffusion_model.single_blocks[0].linear2
    x = torch.randn(1, 3, layer.in_features)
    y = layer(x)
    assert y.shape == (1, 3, layer.out_features) and y.dtype == x.dtype

    class UnknownPatch:
        def __call__(self, weight):
            raise AssertionError("a dense-weight function reached packed data")

    layer.weight_function = [UnknownPatch()]
    with pytest.raises(ops.UnresolvedPatchError, match="single_blocks.0.linear2"):
        layer(x)

    def resolver(module, entry):
        if not isinstance(entry, UnknownPatch):
            return None
        lowrank = comfyui.pack("bonsai_core.lowrank")
        return [lowrank.LowRankBranch(torch.ones(1, module.in_features), torch.ones(module.out_features, 1), 0.5)]

    ops.register_patch_resolver(resolver)
    try:
        expected = y + 0.5 * x.sum(-1, keepdim=True)
        torch.testing.assert_close(layer(x), expected)
    finally:
        ops._PATCH_RESOLVERS.remove(resolver)


def test_replaced_file_reloads_and_is_revalidated(comfyui):
    import os

    fixtures = comfyui.pack("bonsai_tools.synth")
    d = comfyui.models_dir / "diffusion_models"
    path = d / "swap.safetensors"
    try:
        fixtures.make_fixture("binary", "tiny", "canonical", 0, path)
        prompt = recipe(bonsai_loader("swap.safetensors"), steps=1)
        a = comfyui.run(prompt, fresh_cache=True)
        assert a.success, a.error
        fixtures.make_fixture("binary", "tiny", "canonical", 1, path)  # same name, other weights
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        b = comfyui.run(prompt, fresh_cache=False)  # cached node outputs kept: only the fingerprint can force the reload
        assert b.success, b.error
        assert not torch.equal(a.latent(), b.latent())
        _truncate_copy(path, d / "swap.tmp")
        os.replace(d / "swap.tmp", path)
        c = comfyui.run(prompt, fresh_cache=False)
        assert not c.valid and "truncated" in c.node_errors["1"]["errors"][0]["details"]
    finally:
        path.unlink(missing_ok=True)


def test_names_outside_the_models_folders_are_refused(comfyui, loader_mod, tmp_path):
    # A real snapshot outside every models folder: joined to models/bonsai, "/abs/" or "../x/" would reach it.
    fixtures = comfyui.pack("bonsai_tools.synth")
    outside = tmp_path / "outside-snapshot"
    fixtures.make_fixture("binary", "tiny", "gemlite", 0, outside)
    canonical, _ = comfyui.tiny_model("binary")
    rel_up = "/".join([".."] * len(comfyui.models_dir.joinpath("bonsai").parts)) + str(outside)
    for name in (
        "../x.safetensors",
        f"../{canonical}",
        str(comfyui.models_dir / "diffusion_models" / canonical),
        f"{outside}/",
        f"{rel_up}/",
    ):
        result = comfyui.run(recipe(bonsai_loader(name)))
        assert not result.valid, name
        errors = json.dumps(result.node_errors)
        assert "absolute paths and '..' are refused" in errors and "BonsaiModelLoader" in errors, (name, errors)
        with pytest.raises(ValueError, match="refused"):  # a plain exception: ComfyUI shows its type name as is
            loader_mod.resolve_model(name)
