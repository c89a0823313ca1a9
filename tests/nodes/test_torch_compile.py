"""ComfyUI's stock ``TorchCompileModel`` node runs on a Bonsai MODEL and gives the same latents.

The packed linears are one torch custom op (``bonsai_image::lowbit_linear``, nodes/lowbit_op.py)
with a fake implementation, so Dynamo traces every block without a graph break in a linear and
Inductor compiles the rest on this CPU. Tolerance: compiled and eager run the same fp32 maths,
but Inductor fuses and reorders the non-linear parts, so latents agree to 1e-4 of their range.
"""

from __future__ import annotations

import pytest
import torch
from harness.graphs import bonsai_loader, ksampler

pytestmark = pytest.mark.comfyui


def _compiled(canonical: str) -> dict:
    p = ksampler({"class_type": "TorchCompileModel", "inputs": {"model": ["0", 0], "backend": "inductor"}}, steps=2)
    p["0"] = bonsai_loader(canonical)
    return p


def _run(comfyui, prompt: dict) -> torch.Tensor:
    r = comfyui.run(prompt)
    assert r.valid, r.node_errors
    assert r.success, r.error and r.error["exception_message"]
    z = r.latent()
    assert torch.isfinite(z).all()
    return z


def test_torch_compile_model_node_on_bonsai_model(comfyui):
    canonical, _ = comfyui.tiny_model("ternary")
    import torch._dynamo

    torch._dynamo.reset()
    eager = _run(comfyui, ksampler(bonsai_loader(canonical), steps=2))
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = _run(comfyui, _compiled(canonical))
    # Dynamo really compiled frames and no graph break was caused by a Bonsai linear
    assert counters["stats"]["unique_graphs"] >= 1
    breaks = {str(k): v for k, v in counters["graph_break"].items()}
    assert not any("lowbit" in k or "bonsai" in k.lower() for k in breaks), breaks
    err = (compiled - eager).abs().max().item()
    assert err <= 1e-4 * eager.abs().max().item(), f"compiled vs eager: max |diff| {err:.3g}"
    assert torch.ops.bonsai_image.lowbit_linear is not None
