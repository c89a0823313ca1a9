"""The shipped workflows against a real ComfyUI (in this process, --cpu, tiny synthetic models).

* every UI workflow validates structurally against the live node registry (node types, widget
  counts, combo values incl. model and image names, value ranges, every link's endpoints and types);
* UI and API twins describe the same graph;
* every API workflow validates and executes end to end and writes a non-blank PNG of the requested
  size (128x128 here, set through the API graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest

from bonsai_tools.workflows import graph as wg

pytestmark = pytest.mark.comfyui

# The workflows this suite was written for; any other shipped workflow (e.g. the LoRA example) is
# validated and run the same way.
EXPECTED = {
    "Bonsai ternary text to image 512",
    "Bonsai ternary 1024 three loaders",
    "Bonsai binary text to image 1024",
    "Bonsai ternary edit 1 reference",
    "Bonsai ternary edit 2 references",
    "Bonsai Sampler 1024 tiled decode",
    "Bonsai ternary 1024 with LoRAs",
}
SHIPPED = sorted({p.stem for p in we.ui_workflows()} | {p.stem for p in we.api_workflows()} | EXPECTED)
MIN_STD = 4.0  # pixel std (0..255) below this is a blank / flat image


@pytest.fixture(scope="module")
def wf_env(comfyui: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """ComfyUI with tiny fixtures under every name the workflows use (searched first while this module runs)
    and the edit inputs in a temporary input folder. (GetImageSize's ``PromptServer.instance`` is the harness's.)"""
    fp = comfyui.folder_paths
    old_input = fp.get_input_directory()
    input_dir = tmp_path_factory.mktemp("comfy_input")
    models = tmp_path_factory.mktemp("wf_models")
    with we.models_root(fp, models):
        we.install_fixtures(models, input_dir, comfyui.root)
        fp.set_input_directory(str(input_dir))
        try:
            yield comfyui
        finally:
            fp.set_input_directory(old_input)


@pytest.fixture(scope="module")
def schemas(wf_env: Any) -> dict[str, wg.NodeSchema]:
    return {name: wg.NodeSchema.from_node_class(name, cls) for name, cls in wf_env.nodes.NODE_CLASS_MAPPINGS.items()}


def test_every_workflow_has_ui_api_and_thumbnail() -> None:
    ui = {p.stem for p in we.ui_workflows()}
    api = {p.stem for p in we.api_workflows()}
    assert EXPECTED <= ui
    assert ui == api, f"workflows without a twin: UI only {sorted(ui - api)}, API only {sorted(api - ui)}"
    for stem in ui:
        thumb = we.WORKFLOWS / f"{stem}.jpg"
        assert thumb.is_file(), f"{thumb} is missing"
        from PIL import Image

        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 256


@pytest.mark.parametrize("stem", SHIPPED)
def test_ui_workflow_validates_against_live_registry(stem: str, schemas: dict[str, wg.NodeSchema]) -> None:
    ui = we.load_json(we.WORKFLOWS / f"{stem}.json")
    problems = wg.validate_ui(ui, schemas)
    assert problems == [], "\n".join(problems)
    # The frontend needs these on every node; validate_ui checks them, this keeps the intent visible.
    assert all({"id", "type", "pos", "size", "widgets_values", "inputs", "outputs"} <= set(n) for n in ui["nodes"])


@pytest.mark.parametrize("stem", SHIPPED)
def test_ui_and_api_twins_are_the_same_graph(stem: str, schemas: dict[str, wg.NodeSchema]) -> None:
    ui = we.load_json(we.WORKFLOWS / f"{stem}.json")
    api = we.load_json(we.API_DIR / f"{stem}.json")
    assert wg.canonical_from_ui(ui, schemas) == wg.canonical_from_api(api)


def test_validator_catches_broken_ui(schemas: dict[str, wg.NodeSchema]) -> None:
    """The structural check is not vacuous: each kind of damage is reported."""
    ui = we.load_json(we.WORKFLOWS / "Bonsai ternary edit 1 reference.json")
    by_type = {n["type"]: n for n in ui["nodes"]}

    def damaged(edit) -> list[str]:
        import copy

        u = copy.deepcopy(ui)
        edit(u, {n["type"]: n for n in u["nodes"]})
        return wg.validate_ui(u, schemas)

    assert any("unknown node type" in p for p in damaged(lambda u, t: t["VAEEncode"].update(type="VAEEncodeNope")))
    assert any("widget values" in p for p in damaged(lambda u, t: t["CFGGuider"]["widgets_values"].append(3)))
    assert any("not one of the options" in p for p in damaged(lambda u, t: t["KSamplerSelect"].update(widgets_values=["no_such_sampler"])))
    assert any("not one of the options" in p for p in damaged(lambda u, t: t["LoadImage"]["widgets_values"].__setitem__(0, "missing.png")))
    assert any("below the minimum" in p for p in damaged(lambda u, t: t["Flux2Scheduler"]["widgets_values"].__setitem__(0, 0)))
    link_into_vae = next(lk for lk in ui["links"] if lk[3] == by_type["VAEEncode"]["id"] and lk[5] == "VAE")
    assert any("into 'IMAGE'" in p for p in damaged(lambda u, t: _retarget(u, link_into_vae[0], slot=0)))
    assert any("not connected" in p for p in damaged(lambda u, t: _unlink_input(u, t["SamplerCustomAdvanced"], "guider")))


def _retarget(ui: dict[str, Any], link_id: int, slot: int) -> None:
    """Move a link onto another input slot of the same node (VAE into the IMAGE socket)."""
    lk = next(lk for lk in ui["links"] if lk[0] == link_id)
    node = next(n for n in ui["nodes"] if n["id"] == lk[3])
    node["inputs"][lk[4]]["link"] = None
    lk[4] = slot
    node["inputs"][slot]["link"] = link_id


def _unlink_input(ui: dict[str, Any], node: dict[str, Any], name: str) -> None:
    inp = next(i for i in node["inputs"] if i["name"] == name)
    lid = inp["link"]
    inp["link"] = None
    ui["links"] = [lk for lk in ui["links"] if lk[0] != lid]
    for n in ui["nodes"]:
        for o in n["outputs"]:
            o["links"] = [x for x in o.get("links") or [] if x != lid]


@pytest.mark.parametrize("stem", SHIPPED)
def test_api_workflow_runs_and_saves_a_png(stem: str, wf_env: Any) -> None:
    prefix = f"wftest_{stem}"
    out_dir = Path(wf_env.folder_paths.get_output_directory())
    for old in we.saved_images(out_dir, prefix):
        old.unlink()
    prompt = we.for_test(we.load_json(we.API_DIR / f"{stem}.json"), prefix)
    # Node outputs are cached across prompts as on a real server (same loader inputs -> no reload);
    # every distinct loader configuration still runs in the first workflow that uses it.
    result = wf_env.run(prompt, fresh_cache=False)
    assert result.valid, f"validation failed: {result.validation_error} {result.node_errors}"
    assert result.success, f"execution failed: {result.error}"
    files = we.saved_images(out_dir, prefix)
    assert len(files) == 1, f"expected one PNG with prefix {prefix} in {out_dir}, found {files}"
    size, std, distinct = we.image_stats(files[0])
    assert size == (we.TEST_SIZE, we.TEST_SIZE)
    assert std > MIN_STD and distinct > 16, f"{files[0]} looks blank: std {std:.2f}, {distinct} distinct values"


def test_edit_workflow_output_follows_reference_size(wf_env: Any) -> None:
    """The edit graph sizes its output from reference 1 (GetImageSize), not from fixed widgets."""
    prefix = "wftest_edit_aspect"
    out_dir = Path(wf_env.folder_paths.get_output_directory())
    prompt = we.for_test(we.load_json(we.API_DIR / "Bonsai ternary edit 2 references.json"), prefix)
    # Reference 1 is 256x256 on disk; use the 192x128 image instead: 3:2 at 128*128 px -> 160x112 (steps of 16).
    load1 = next(n for n in prompt.values() if n["class_type"] == "LoadImage" and n["inputs"]["image"] == "bonsai_edit_input_1.png")
    load1["inputs"]["image"] = "bonsai_edit_input_2.png"
    result = wf_env.run(prompt, fresh_cache=False)
    assert result.success, f"execution failed: {result.error or result.validation_error}"
    (png,) = we.saved_images(out_dir, prefix)
    # ImageScaleToTotalPixels: scale sqrt(128*128 / (192*128)) = 0.8165 -> 156.8 x 104.5 -> multiples of 16: 160 x 112.
    assert we.image_stats(png)[0] == (160, 112)
