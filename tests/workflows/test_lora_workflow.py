"""The shipped LoRA workflow, run through ComfyUI's executor on tiny fixtures.

Beyond "it runs" (tests/workflows/test_workflows.py): the LoRAs change the result, changing a strength
re-runs only the LoRA node (the Bonsai loader's MODEL comes from ComfyUI's cache: no reload), and
after the LoRA nodes are removed the cached model gives exactly what a freshly loaded one gives
(no branch left behind).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bonsai_tools.synth import make_lora_fixture, make_snapshot_fixture

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
STEM = "Bonsai ternary 1024 with LoRAs"
SIZE = 64


@pytest.fixture(scope="module")
def prompt(comfyui, module_models) -> dict[str, Any]:
    """The API twin at 64x64, capturing the sampled latent instead of decoding and saving it.

    Its snapshot and LoRAs are written into this module's own models root (searched first), so a
    same-named folder another module left elsewhere can neither hide nor replace them."""
    api = json.loads((REPO / "workflows" / "api" / f"{STEM}.json").read_text())
    snapshot = api["1"]["inputs"]["snapshot"].rstrip("/")
    tokenizer = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    made = make_snapshot_fixture("ternary", "gemlite", module_models / "bonsai", size="tiny", seed=1, tokenizer_src=tokenizer)
    assert made.name == snapshot, (made, snapshot)
    loras = [n for n in api.values() if n["class_type"] == "LoraLoaderModelOnly"]
    assert len(loras) == 2
    for i, node in enumerate(loras):
        make_lora_fixture(module_models / "loras" / node["inputs"]["lora_name"], "tiny", rank=4, seed=i)
    g = copy.deepcopy(api)
    for node in g.values():
        if node["class_type"] in ("EmptyFlux2LatentImage", "Flux2Scheduler"):
            node["inputs"].update(width=SIZE, height=SIZE)
    sampler = next(k for k, n in g.items() if n["class_type"] == "SamplerCustomAdvanced")
    for k in [k for k, n in g.items() if n["class_type"] in ("VAEDecode", "SaveImage")]:
        del g[k]
    g["99"] = {"class_type": "BonsaiTestCapture", "inputs": {"value": [sampler, 0], "label": "out"}}
    return g


def without_loras(p: dict[str, Any]) -> dict[str, Any]:
    g = copy.deepcopy(p)
    guider = next(n for n in g.values() if n["class_type"] == "CFGGuider")
    guider["inputs"]["model"] = ["1", 0]
    for k in [k for k, n in g.items() if n["class_type"] == "LoraLoaderModelOnly"]:
        del g[k]
    return g


def cached_nodes(result) -> set[str]:
    data = result.message("execution_cached")
    return set(data["nodes"]) if data else set()


def test_lora_workflow_strength_change_and_removal(comfyui, prompt) -> None:
    r_lora = comfyui.run(prompt)
    assert r_lora.success, r_lora.error or r_lora.validation_error
    with_lora = r_lora.latent().clone()

    changed = copy.deepcopy(prompt)
    lora2 = [k for k, n in changed.items() if n["class_type"] == "LoraLoaderModelOnly"][1]
    changed[lora2]["inputs"]["strength_model"] = -0.8
    r_changed = comfyui.run(changed, fresh_cache=False)
    assert r_changed.success, r_changed.error
    assert "1" in cached_nodes(r_changed), "changing a LoRA strength re-ran the Bonsai loader"
    assert not torch.equal(r_changed.latent(), with_lora)

    r_removed = comfyui.run(without_loras(prompt), fresh_cache=False)
    assert r_removed.success, r_removed.error
    assert "1" in cached_nodes(r_removed)
    r_fresh = comfyui.run(without_loras(prompt), fresh_cache=True)
    assert r_fresh.success, r_fresh.error
    assert torch.equal(r_removed.latent(), r_fresh.latent()), "a LoRA branch survived the LoRA's removal"
    assert (with_lora - r_fresh.latent()).abs().mean() > 1e-3, "the LoRAs had no visible effect"
