"""Optional ComfyUI helpers: a missing or renamed one turns off one feature with a log line, never the pack;
the FLUX.2 schedule is the pack's own and equals ComfyUI's ``Flux2Scheduler``."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("steps", "width", "height"), [(4, 1024, 1024), (4, 512, 512), (1, 64, 64), (8, 1536, 1536), (50, 1024, 768), (4, 1000, 1000)]
)
def test_schedule_equals_comfyui_flux2_scheduler(comfyui, steps, width, height) -> None:
    ours = comfyui.pack("bonsai_core.flux2_schedule").flux2_sigmas(steps, width, height)
    stock = comfyui.node_class("Flux2Scheduler").execute(steps, width, height)[0]
    assert torch.equal(ours, stock), (ours, stock)


def test_no_node_module_imports_comfy_extras() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+comfy_extras\b", re.M)
    users = [p.name for p in (REPO / "nodes").glob("*.py") if pattern.search(p.read_text())]
    assert users == []


def _conditioning() -> list:
    g = torch.Generator().manual_seed(3)
    return [[torch.randn(1, 8, 384, generator=g), {"pooled_output": None}]]


def test_missing_helpers_turn_off_one_feature_each(comfyui, monkeypatch, caplog) -> None:
    import comfy.model_management
    import comfy.ops
    import comfy.sample
    import latent_preview

    features = comfyui.pack("nodes.comfy_features")
    loader, sampler = comfyui.pack("nodes.model_loader"), comfyui.pack("nodes.sampler")
    path = comfyui.models_dir / "diffusion_models" / comfyui.tiny_model("binary")[0]
    latent = sampler.empty_latent(64, 64, 1)
    model = loader.load_bonsai_model(path)
    want = sampler.sample_recipe(model, _conditioning(), 9, latent, steps=2)["samples"]
    comfy.model_management.unload_all_models()

    monkeypatch.setattr(features, "_cache", {})
    monkeypatch.setattr(features, "_reported", set())
    # helpers only the pack calls are removed for real; comfy.ops.run_every_op is also called by stock
    # layers, so its absence is simulated for the pack's lookup alone (what a rename would look like)
    monkeypatch.delattr(latent_preview, "prepare_callback")
    monkeypatch.delattr(comfy.sample, "fix_empty_latent_channels")
    monkeypatch.setattr(comfy.ops, "run_every_op_renamed", comfy.ops.run_every_op, raising=False)
    real_optional = features.optional
    monkeypatch.setattr(features, "optional", lambda m, n, f: real_optional(m, n + "_gone" if n == "run_every_op" else n, f))
    with caplog.at_level(logging.WARNING, logger="bonsai_image.comfy_features"):
        got = sampler.sample_recipe(model, _conditioning(), 9, latent, steps=2)["samples"]
        again = sampler.sample_recipe(model, _conditioning(), 9, latent, steps=2)["samples"]
    assert torch.equal(got, want) and torch.equal(again, want)
    lines = [r.getMessage() for r in caplog.records]
    for name in ("run_every_op_gone", "prepare_callback", "fix_empty_latent_channels"):
        assert sum(name in line for line in lines) == 1, lines  # one line per missing helper, not one per call
    assert set(features.missing()) == {
        ("comfy.ops", "run_every_op_gone"),
        ("latent_preview", "prepare_callback"),
        ("comfy.sample", "fix_empty_latent_channels"),
    }
    comfy.model_management.unload_all_models()


def test_pack_registers_its_nodes_without_optional_helpers(comfyui, monkeypatch) -> None:
    import comfy.ops
    import latent_preview

    monkeypatch.delattr(comfy.ops, "run_every_op")
    monkeypatch.delattr(latent_preview, "prepare_callback")
    root = comfyui.pack_module
    found = {n.GET_SCHEMA().node_id for n in root.gather_nodes()}
    assert {"BonsaiModelLoader", "BonsaiSampler"} <= found
    assert not root.IMPORT_ERRORS, root.IMPORT_ERRORS
