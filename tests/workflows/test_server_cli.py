"""A real ComfyUI server (``main.py --cpu``) with the pack in ``custom_nodes/``, driven by comfy-cli.

The server is a subprocess started exactly as a user would (plus temp folders and an
``extra_model_paths.yaml`` pointing at tiny fixtures under the names the workflows use);
``comfy run --workflow <file> --wait`` submits a shipped workflow and waits for it. Both the API
twin and the UI file (which comfy-cli converts through the server's ``/object_info``) are run,
and each must leave a new, non-blank PNG of the requested size in the output folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest
from harness.comfyui import ComfyUISession
from harness.server import BOOT_TIMEOUT_S, comfyui_server, folders

pytestmark = pytest.mark.comfyui

WORKFLOW = "Bonsai ternary text to image 512"
RUN_TIMEOUT_S = 300


def _find_comfy_cli() -> Path | None:
    cand = Path(sys.executable).parent / "comfy"
    if cand.is_file():
        return cand
    found = shutil.which("comfy")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def server(comfyui: ComfyUISession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A ComfyUI server subprocess on a free port (see harness.server); always terminated.

    Depends on the in-process session only for the checkout it found (and so that the session's
    ComfyUI status, which CI reports, says these tests ran).
    """
    base = tmp_path_factory.mktemp("server")
    models, inputs, _ = folders(base)
    we.install_fixtures(models, inputs, comfyui.root)
    with comfyui_server(comfyui.root, base, BOOT_TIMEOUT_S) as srv:
        yield {"port": srv.port, "out": srv.out, "base": srv.base, "root": srv.root, "object_info": srv.object_info, "log": srv.log}


def test_server_lists_pack_nodes_and_fixture_models(server: dict[str, Any]) -> None:
    info = server["object_info"]
    for node in ("BonsaiPipelineLoader", "BonsaiModelLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader", "BonsaiSampler"):
        assert node in info, f"{node} missing from /object_info"
    snapshots = info["BonsaiPipelineLoader"]["input"]["required"]["snapshot"]
    options = snapshots[1]["options"] if snapshots[0] == "COMBO" else snapshots[0]
    assert "bonsai-image-ternary-4B-gemlite-2bit/" in options


def _ui_for_test(ui: dict[str, Any], prefix: str, size: int) -> dict[str, Any]:
    """The UI workflow at ``size`` x ``size`` saving under ``prefix`` (what ``we.for_test`` does to API graphs,
    applied to widget values in each node's widget order)."""
    for n in ui["nodes"]:
        v = n.get("widgets_values")
        if n["type"] == "EmptyFlux2LatentImage":
            v[0] = v[1] = size
        elif n["type"] == "Flux2Scheduler":
            v[1] = v[2] = size
        elif n["type"] == "ImageScaleToTotalPixels":  # edit graphs: output size = scaled reference 1 (256x256 on disk)
            v[1] = size * size / (1024 * 1024)
        elif n["type"] == "SaveImage":
            v[0] = prefix
    return ui


# API twin as is; UI files converted by comfy-cli against the server's /object_info: the plain
# text-to-image graph, and the two-reference edit graph (widgets driven by links, chained ReferenceLatent).
CASES = [("api", WORKFLOW), ("ui", WORKFLOW), ("ui", "Bonsai ternary edit 2 references")]


@pytest.mark.parametrize(("fmt", "stem"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_comfy_cli_run_produces_an_image(server: dict[str, Any], fmt: str, stem: str) -> None:
    comfy_cli = _find_comfy_cli()
    if comfy_cli is None:
        pytest.fail("comfy-cli is not installed in this environment (pip install comfy-cli)")
    prefix = f"cli_{fmt}_{stem}"
    if fmt == "api":
        wf = we.for_test(we.load_json(we.API_DIR / f"{stem}.json"), prefix)
    else:
        wf = _ui_for_test(we.load_json(we.WORKFLOWS / f"{stem}.json"), prefix, we.TEST_SIZE)
    wf_path = server["base"] / f"{prefix}.json"
    wf_path.write_text(json.dumps(wf))
    before = set(we.saved_images(server["out"], prefix))
    home = server["base"] / f"home_{fmt}"
    home.mkdir(exist_ok=True)
    cmd = [
        str(comfy_cli), "--skip-prompt", "--no-json", "--workspace", str(server["root"]), "run", "--workflow", str(wf_path),
        "--wait", "--host", "127.0.0.1", "--port", str(server["port"]), "--timeout", str(RUN_TIMEOUT_S), "--where", "local",
    ]  # fmt: skip
    r = subprocess.run(cmd, env=we.environ_without_tracking(home), capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)
    server_log = server["log"].read_text(errors="replace")[-3000:]
    assert r.returncode == 0, f"comfy run failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\nserver log:\n{server_log}"
    new = sorted(set(we.saved_images(server["out"], prefix)) - before)
    assert len(new) == 1, (
        f"expected one new PNG with prefix {prefix}, found {new}\ncomfy run said:\n{r.stdout[-2000:]}\nserver log:\n{server_log}"
    )
    size, std, distinct = we.image_stats(new[0])
    assert size == (we.TEST_SIZE, we.TEST_SIZE)
    assert std > 4.0 and distinct > 16, f"{new[0]} looks blank: std {std:.2f}, {distinct} distinct values"
