"""The pack loads through ComfyUI's own custom-node loader and registers every node it exports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.comfyui

REQUIRED = {"BonsaiModelLoader", "BonsaiSampler"}


def test_pack_loaded_by_comfyui_loader(comfyui):
    import nodes

    assert nodes.LOADED_MODULE_DIRS[comfyui.pack_path.name] == os.path.abspath(comfyui.pack_path)
    assert comfyui.pack_module.__file__ == str(comfyui.pack_path / "__init__.py")
    # V1 mappings would make ComfyUI ignore the V3 entry point.
    assert not hasattr(comfyui.pack_module, "NODE_CLASS_MAPPINGS")
    assert comfyui.pack_module.IMPORT_ERRORS == {}, comfyui.pack_module.IMPORT_ERRORS


def test_every_exported_node_is_registered(comfyui):
    import nodes

    exported = {}
    for name in comfyui.pack_module._node_modules():
        for node in getattr(comfyui.pack(f"nodes.{name}"), "NODES", ()):  # a module may only provide hooks (lora)
            exported[node.GET_SCHEMA().node_id] = node
    assert REQUIRED <= set(exported)
    for node_id, node in exported.items():
        assert nodes.NODE_CLASS_MAPPINGS[node_id] is node
        assert node.RELATIVE_PYTHON_MODULE == f"custom_nodes.{comfyui.pack_path.name}"
        info = node.GET_NODE_INFO_V1()  # what /object_info serves the frontend
        assert info["name"] == node_id and info["output"], node_id
    assert set(exported) == set(comfyui.pack_nodes)


def test_loader_and_sampler_sockets(comfyui):
    loader = comfyui.node_class("BonsaiModelLoader").GET_NODE_INFO_V1()
    assert loader["output"] == ["MODEL"]
    assert set(loader["input"]["required"]) == {"model_name", "backend", "compute_dtype"}
    backends = loader["input"]["required"]["backend"][1]["options"]
    assert backends[0] == "auto" and "torch" in backends
    sampler = comfyui.node_class("BonsaiSampler").GET_NODE_INFO_V1()
    assert sampler["output"] == ["LATENT"]
    assert {"model", "positive", "seed", "width", "height", "batch_size"} <= set(sampler["input"]["required"])
    assert "latent_image" in sampler["input"]["optional"]


def test_a_broken_node_module_does_not_block_the_rest(comfyui, monkeypatch, caplog):
    pack = comfyui.pack_module
    monkeypatch.setattr(pack, "_node_modules", lambda: ["model_loader", "zz_missing_optional_backend", "sampler"])
    try:
        found = {n.GET_SCHEMA().node_id for n in pack.gather_nodes()}
        assert REQUIRED <= found
        assert "zz_missing_optional_backend" in pack.IMPORT_ERRORS
        assert any("nodes/zz_missing_optional_backend.py could not be imported" in r.getMessage() for r in caplog.records)
    finally:
        pack.IMPORT_ERRORS.pop("zz_missing_optional_backend", None)


def test_core_imports_without_comfyui(comfyui):
    # bonsai_core must work in a plain Python (CLI, conversion) where ComfyUI is not importable.
    code = (
        "import sys; sys.modules['comfy'] = None; sys.modules['folder_paths'] = None\n"
        "import bonsai_core, bonsai_core.canonical, bonsai_core.dispatch, bonsai_core.formats\n"
        "assert not [m for m in sys.modules if m.startswith(('comfy.', 'comfy_api'))]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=str(comfyui.pack_path.resolve()), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
