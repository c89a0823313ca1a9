"""The compiled path's packed product keeps no tensor between calls (CPU, Triton's interpreter).

Under ``TorchCompileModel`` the packed product runs as the custom op ``bonsai_image::lowbit_linear``;
with ``cudagraphs`` its body runs inside the graph's warm-up and capture, where any tensor it keeps
(the shared scratch grown, a prepared per-layer tensor) outlives the capture and breaks it
("tensors in the cudagraph pool not tracked as outputs"). So the op's body must leave the shared
scratch and the layer's state without new tensors, and still compute exactly what eager computes.
The GPU side (the real capture through the executor) is tests/nodes/test_graph_replay_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfyui


def _tensors(state: dict) -> set[int]:
    out: set[int] = set()
    for v in state.values():
        for t in v if isinstance(v, tuple) else (v,):
            if isinstance(t, torch.Tensor):
                out.add(id(t))
    return out


@pytest.mark.parametrize("backend", ["triton_dequant", "fp8_rowwise", "torch"])
def test_custom_op_keeps_no_tensor(comfyui, monkeypatch, backend: str) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when kernels are wrapped and when backends check the device
    registry, rules = comfyui.pack("bonsai_core.dispatch.registry"), comfyui.pack("bonsai_core.dispatch.rules")

    def forget() -> None:  # availability and choices depend on the interpreter flag
        registry.forget_availability()
        rules.forget_choices()

    forget()
    td = comfyui.pack("kernels.triton_dequant")
    lowbit_op = comfyui.pack("nodes.lowbit_op")
    name, _ = comfyui.tiny_model("ternary")
    loader = comfyui.pack("nodes.model_loader")
    dm = loader.load_bonsai_model(comfyui.models_dir / "diffusion_models" / name).model.diffusion_model
    layer = dm.double_blocks[0].img_attn.qkv
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, layer.in_features, generator=g).bfloat16()
    assert rules.select_backend(x.device, x.dtype, layer.bonsai_bits, 7, backend) == backend  # no silent fallback
    try:
        td.SCRATCH.clear()
        layer._drop_state()
        op = torch.ops.bonsai_image.lowbit_linear
        args = (layer.codes, layer.scales, layer.bonsai_bits, backend, layer.bonsai_uid, layer.zeros)  # as ops.py calls it
        y_op = op(x, *args)
        assert td.SCRATCH.nbytes() == 0, "the op grew the shared scratch"
        assert not _tensors(layer.bonsai_state), f"the op kept tensors in the layer state: {list(layer.bonsai_state)}"
        # eager keeps what it likes (outside any graph pool) and gives the same bits
        y_eager = lowbit_op.packed_linear(x, *args)
        assert torch.equal(y_op, y_eager)
        kept = _tensors(layer.bonsai_state)
        y_again = op(x, *args)
        assert torch.equal(y_again, y_eager) and _tensors(layer.bonsai_state) == kept
    finally:
        td.SCRATCH.clear()
        monkeypatch.delenv("TRITON_INTERPRET")
        forget()


def test_no_tensor_state_writes_through_plain_values_only(comfyui) -> None:
    lowbit_op = comfyui.pack("nodes.lowbit_op")
    real: dict = {"weight": "w"}
    view = lowbit_op._NoTensorState({}, real)
    view["cfg"] = "n64w4"
    view["variant"] = ("sm", 3)
    view["prep"] = (torch.zeros(1), torch.zeros(1))
    view["w"] = torch.zeros(2)
    assert real == {"weight": "w", "cfg": "n64w4", "variant": ("sm", 3)}
    assert view["weight"] == "w" and isinstance(view["prep"], tuple) and "w" in view


def test_loader_graph_replay_installs_the_stock_compile_wrapper(comfyui) -> None:
    """``graph_replay`` gives a non-dynamic clone with the stock node's torch.compile wrapper; ``off`` changes nothing."""
    from comfy.patcher_extension import WrappersMP
    from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, TORCH_COMPILE_KWARGS

    name, _ = comfyui.tiny_model("ternary")
    loader = comfyui.node_class("BonsaiModelLoader")
    inputs = {"model_name": name, "backend": "auto", "compute_dtype": "default"}
    plain = loader.execute(**inputs).result[0]
    assert TORCH_COMPILE_KWARGS not in plain.model_options
    for backend in ("cudagraphs", "inductor"):
        m = loader.execute(**inputs, graph_replay=backend).result[0]
        assert m.model_options[TORCH_COMPILE_KWARGS]["backend"] == backend
        assert m.get_wrappers(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    assert loader.fingerprint_inputs(name, "auto", "default", "cudagraphs") != loader.fingerprint_inputs(name, "auto", "default")
    with pytest.raises(ValueError, match="graph_replay"):
        comfyui.pack("nodes.graph_replay").with_graph_replay(plain, "tensorrt")
