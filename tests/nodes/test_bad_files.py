"""One bad file costs only its own entry: the pack's nodes, their dropdowns and other prompts keep working.

Hostile and unlucky files are put where users put models (``models/diffusion_models``, ``models/bonsai``):
random bytes, a header declaring a terabyte, JSON nested 100,000 deep, NaN shapes, a gemlite archive
that is not a zip, a VAE config with ``1e999``, a FIFO named ``config.json``, a symlink loop. Listing
must not raise, hang or allocate more than a header's worth per entry; ComfyUI's node registration
(what a restart does) and ``/object_info`` must keep every node; a good model next to them still runs.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hostile_files import PACK_NODES, plant_bad_files

from bonsai_tools.synth import make_fixture, make_vae_fixture

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def tree(comfyui: Any, module_models: Path) -> dict[str, Any]:
    bonsai = module_models / "bonsai"
    make_fixture("ternary", "tiny", "canonical", 0, bonsai / "good-ternary.safetensors")
    make_vae_fixture("tiny", 5, bonsai / "good-vae" / "vae")
    return {"bad": plant_bad_files(module_models), "models": module_models}


def test_registration_keeps_every_node(comfyui: Any, tree: dict[str, Any]) -> None:
    """What ComfyUI does when it (re)loads the pack: gather the nodes and build each schema."""
    pack = comfyui.pack_module
    start = time.monotonic()
    nodes = {n.GET_SCHEMA().node_id for n in pack.gather_nodes()}
    assert PACK_NODES <= nodes and pack.IMPORT_ERRORS == {}, pack.IMPORT_ERRORS
    assert time.monotonic() - start < 60


def test_object_info_serves_every_loader_without_the_bad_entries(comfyui: Any, tree: dict[str, Any]) -> None:
    infos = {node_id: comfyui.node_class(node_id).GET_NODE_INFO_V1() for node_id in PACK_NODES}
    model_options = infos["BonsaiModelLoader"]["input"]["required"]["model_name"][1]["options"]
    assert "good-ternary.safetensors" in model_options
    # Listed entries are loadable or explained at validation: a gemlite archive is only opened there.
    assert not [o for o in model_options if o.startswith("bad-") and o != "bad-gemlite/"], model_options
    assert "good-vae/vae/" not in model_options  # a VAE's diffusion_pytorch_model.safetensors is no transformer
    vae_options = infos["BonsaiVAELoader"]["input"]["required"]["vae_folder"][1]["options"]
    assert "good-vae/vae" in vae_options and "bad-vae/vae" not in vae_options
    te_options = infos["BonsaiTextEncoderLoader"]["input"]["required"]["text_encoder"][1]["options"]
    assert not [o for o in te_options if "bad-te" in o or "fifo-te" in o], te_options
    json.dumps(infos)  # what /object_info sends must serialise


def test_listing_allocates_no_more_than_headers(comfyui: Any, tree: dict[str, Any]) -> None:
    folders = comfyui.pack("nodes.folders")
    sources = comfyui.pack("nodes.model_sources")
    folders.forget()  # measure the first, uncached listing
    tracemalloc.start()
    try:
        sources.list_models()
        comfyui.pack("nodes.text_encoder").list_te_folders()
        comfyui.pack("nodes.vae").list_vae_folders()
        comfyui.pack("nodes.pipeline").list_snapshots()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"listing peaked at {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    "name", ["bad-random.safetensors", "bad-terabyte-header.safetensors", "bad-deep-header.safetensors", "bad-empty.safetensors"]
)
def test_a_bad_file_picked_anyway_is_one_line_at_validation(comfyui: Any, tree: dict[str, Any], name: str) -> None:
    prompt = {
        "1": {"class_type": "BonsaiModelLoader", "inputs": {"model_name": name, "backend": "auto", "compute_dtype": "default"}},
        "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "model"}},
    }
    result = comfyui.run(prompt)
    assert not result.valid
    (error,) = result.node_errors["1"]["errors"]
    assert name in error["details"] and "\n" not in error["details"] and "Traceback" not in error["details"], error


def test_other_prompts_keep_working(comfyui: Any, tree: dict[str, Any]) -> None:
    vae = comfyui.run(
        {
            "1": {"class_type": "BonsaiVAELoader", "inputs": {"vae_folder": "good-vae/vae"}},
            "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "vae"}},
        }
    )
    assert vae.success, vae.error
    model = comfyui.run(
        {
            "1": {
                "class_type": "BonsaiModelLoader",
                "inputs": {"model_name": "good-ternary.safetensors", "backend": "auto", "compute_dtype": "default"},
            },
            "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "model"}},
        }
    )
    assert model.success, model.error


def test_a_node_whose_schema_fails_is_dropped_alone(
    comfyui: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Listings never raise, but should a schema fail anyway (a bug), ComfyUI would reject the whole pack
    at registration: the entry point builds each schema first and leaves out only the failing node."""
    te = comfyui.pack("nodes.text_encoder")

    def broken() -> dict[str, Path]:
        raise RuntimeError("simulated listing bug")

    monkeypatch.setattr(te, "list_te_folders", broken)
    comfyui.pack("nodes.folders").forget()  # no kept listing to fall back on: the schema itself fails
    pack = comfyui.pack_module
    try:
        found = {n.GET_SCHEMA().node_id for n in pack.gather_nodes()}
        assert "BonsaiTextEncoderLoader" not in found and PACK_NODES - {"BonsaiTextEncoderLoader"} <= found
        assert "text_encoder.BonsaiTextEncoderLoader" in pack.IMPORT_ERRORS
        assert any("BonsaiTextEncoderLoader is unavailable" in r.getMessage() for r in caplog.records)
    finally:
        pack.IMPORT_ERRORS.pop("text_encoder.BonsaiTextEncoderLoader", None)
