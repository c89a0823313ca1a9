"""Graph replay through ComfyUI's stock ``TorchCompileModel`` node on a Bonsai MODEL, on the GPU.

Runs with ``BONSAI_TEST_COMFY_DEVICE=gpu`` (the ComfyUI session then starts on the GPU, as
``main.py`` does) through the device tool; skipped elsewhere. One process, as a user's ComfyUI:
a stock model runs first (eager and replayed), then every Bonsai backend that ``auto`` /
``auto-fp8`` pick, under both backends of the node, across a resolution change, a LoRA and its
strength change, and ComfyUI unloading the model between prompts. Before the packed product kept
no tensor of its own during capture this failed with "Detected 10 tensor(s) in the cudagraph pool
not tracked as outputs" (exact path) and "Any stale tensors which are being manually freed must be
passed to set checkpoint" (FP8 path), and the process aborted at exit.

Exactness: ``cudagraphs`` replays the eager kernels, so the exact path equals stock bf16 under the
same node bit for bit, and every Bonsai path equals its own eager run. Inductor generates its own
kernels around the matmuls: the packed product is an opaque op for it, a stock linear is not, so
fusions (and roundings) around the linears differ; the difference is bounded below.
"""

from __future__ import annotations

import pytest
import torch
from harness.comfyui import session_on_gpu
from harness.graphs import bonsai_loader, ksampler, unet_loader
from lora_fixtures import bfl_names, lora_tensors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.comfyui,
    pytest.mark.skipif(not torch.cuda.is_available() or not session_on_gpu(), reason="needs a CUDA GPU and BONSAI_TEST_COMFY_DEVICE=gpu"),
]

# Inductor vs eager on the tiny bf16 model, relative L2 of the final latents (bf16 roundings in
# other places of the fused blocks; measured on an H100 well under this).
INDUCTOR_REL = 2e-2


def _prompt(loader: dict, *, compile_backend: str | None = None, lora: tuple[str, float] | None = None, size: int = 64) -> dict:
    model: list = ["0", 0]
    extra: dict = {"0": loader}
    if lora is not None:
        extra["5"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora[0], "strength_model": lora[1]}}
        model = ["5", 0]
    if compile_backend is not None:
        extra["6"] = {"class_type": "TorchCompileModel", "inputs": {"model": model, "backend": compile_backend}}
        model = ["6", 0]
    p = ksampler({"class_type": "PrimitiveNode"}, width=size, height=size, steps=3)
    del p["1"]
    p["3"]["inputs"]["model"] = model
    p.update(extra)
    return p


def _run(comfyui, prompt: dict, fresh: bool = False) -> torch.Tensor:
    r = comfyui.run(prompt, fresh_cache=fresh)
    assert r.valid, r.node_errors
    assert r.success, r.error and r.error["exception_message"]
    z = r.latent().float().cpu()
    assert torch.isfinite(z).all()
    return z


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _fresh_compiler() -> None:
    # every compiled sequence starts from an empty Dynamo cache (its recompile limit would otherwise
    # send later models to eager without a word) and checks that frames really were compiled
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def _compiled_frames() -> int:
    import torch._dynamo

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _unload() -> None:
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()


def test_torch_compile_model_both_backends_after_stock(comfyui, comfy_models):
    import torch._dynamo

    canonical, dense = comfyui.tiny_model("ternary")
    (comfy_models / "loras").mkdir(exist_ok=True)
    import safetensors.torch

    safetensors.torch.save_file(lora_tensors(bfl_names(), "AB", seed=21), comfy_models / "loras" / "replay_lora.safetensors")
    lora = "replay_lora.safetensors"
    _fresh_compiler()
    # a stock model first, eager and replayed, as a user's ComfyUI would have run
    stock = {s: _run(comfyui, _prompt(unet_loader(dense), size=s), fresh=True) for s in (64, 96)}
    stock_cg = {s: _run(comfyui, _prompt(unet_loader(dense), compile_backend="cudagraphs", size=s)) for s in (64, 96)}
    _fresh_compiler()
    stock_ind = _run(comfyui, _prompt(unet_loader(dense), compile_backend="inductor"), fresh=True)
    assert _compiled_frames() > 0
    for s in (64, 96):
        assert torch.equal(stock_cg[s], stock[s]), "stock bf16 under cudagraphs differs from eager"
    report: dict[str, float] = {}
    for backend in ("auto", "auto-fp8"):
        loader = bonsai_loader(canonical, backend=backend)
        eager = {s: _run(comfyui, _prompt(loader, size=s), fresh=True) for s in (64, 96)}
        eager_lora = {st: _run(comfyui, _prompt(loader, lora=(lora, st))) for st in (0.8, -0.5)}
        if backend == "auto":
            for s in (64, 96):
                assert torch.equal(eager[s], stock[s]), "exact path differs from stock bf16 eager"
        # cudagraphs: two resolutions, back to the first, ComfyUI unloading the model in between,
        # then a LoRA and a new strength: every result equals the eager run bit for bit
        _run(comfyui, _prompt(loader), fresh=True)
        _fresh_compiler()
        for s in (64, 96, 64):
            got = _run(comfyui, _prompt(loader, compile_backend="cudagraphs", size=s))
            assert torch.equal(got, eager[s]), f"{backend} cudagraphs at {s}: max |diff| {(got - eager[s]).abs().max():.3g}"
            if backend == "auto":
                assert torch.equal(got, stock_cg[s])
            _unload()
        for st in (0.8, -0.5):
            got = _run(comfyui, _prompt(loader, compile_backend="cudagraphs", lora=(lora, st)))
            assert torch.equal(got, eager_lora[st]), f"{backend} cudagraphs with LoRA {st}"
        assert _compiled_frames() > 0
        # inductor: same sequence, bounded difference (see the module docstring)
        _fresh_compiler()
        for s in (64, 96):
            got = _run(comfyui, _prompt(loader, compile_backend="inductor", size=s))
            report[f"{backend}-inductor-{s}"] = _rel(got, eager[s])
            assert report[f"{backend}-inductor-{s}"] < INDUCTOR_REL
            _unload()
        got = _run(comfyui, _prompt(loader, compile_backend="inductor", lora=(lora, 0.8)))
        report[f"{backend}-inductor-lora"] = _rel(got, eager_lora[0.8])
        assert report[f"{backend}-inductor-lora"] < INDUCTOR_REL
        assert _compiled_frames() > 0
        if backend == "auto":
            got = _run(comfyui, _prompt(loader, compile_backend="inductor"))
            report["auto-inductor-vs-stock-inductor"] = _rel(got, stock_ind)
            assert report["auto-inductor-vs-stock-inductor"] < INDUCTOR_REL
    print("graph-replay relative errors:", report)


def test_loader_graph_replay_option(comfyui):
    """The loader's own ``graph_replay`` input gives the same result as the stock node after it."""
    canonical, _ = comfyui.tiny_model("ternary")
    loader = bonsai_loader(canonical, backend="auto")
    eager = {s: _run(comfyui, _prompt(loader, size=s), fresh=True) for s in (64, 96)}
    _fresh_compiler()
    replay = dict(loader, inputs={**loader["inputs"], "graph_replay": "cudagraphs"})
    for s in (64, 96, 64):  # never the same prompt twice in a row: the executor would serve it from its cache
        assert torch.equal(_run(comfyui, _prompt(replay, size=s)), eager[s])
    assert _compiled_frames() > 0
