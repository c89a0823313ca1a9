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


def test_torch_compile_model_node_on_bonsai_model(comfyui, monkeypatch):
    canonical, _ = comfyui.tiny_model("ternary")
    import torch._dynamo

    lowbit_op = comfyui.pack("nodes.lowbit_op")
    runs: list[bool] = []  # one entry per execution of the packed product: was Dynamo tracing it?
    real = lowbit_op.packed_linear

    def spy(*args, **kwargs):
        runs.append(torch.compiler.is_compiling())
        return real(*args, **kwargs)

    monkeypatch.setattr(lowbit_op, "packed_linear", spy)
    torch._dynamo.reset()
    eager = _run(comfyui, ksampler(bonsai_loader(canonical), steps=2))
    n_eager = len(runs)
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = _run(comfyui, _compiled(canonical))
    assert counters["stats"]["unique_graphs"] >= 1  # Dynamo really compiled frames
    # Every packed product of the compiled run executed as the opaque custom op: none was traced
    # through by Dynamo (that would run the Python body while compiling, and break graphs on the
    # backends' Triton launches and state dicts).
    assert len(runs) > n_eager and not any(runs[n_eager:])
    breaks = {str(k): v for k, v in counters["graph_break"].items()}
    assert not any("lowbit" in k or "bonsai" in k.lower() for k in breaks), breaks
    err = (compiled - eager).abs().max().item()
    assert err <= 1e-4 * eager.abs().max().item(), f"compiled vs eager: max |diff| {err:.3g}"
