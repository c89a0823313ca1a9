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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest
from harness.comfyui import ComfyUISession
from harness.locate import link_pack

pytestmark = pytest.mark.comfyui

WORKFLOW = "bonsai_ternary_t2i_512"
PACK_DIR_NAME = "bonsai_image"
BOOT_TIMEOUT_S = 240  # server start on a busy 2-core CI machine
RUN_TIMEOUT_S = 300


def _find_comfy_cli() -> Path | None:
    cand = Path(sys.executable).parent / "comfy"
    if cand.is_file():
        return cand
    found = shutil.which("comfy")
    return Path(found) if found else None


def _link_pack(comfy_root: Path) -> None:
    link_pack(comfy_root / "custom_nodes")


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (local test server)
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(comfyui: ComfyUISession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A ComfyUI server subprocess on a free port; always terminated.

    Depends on the in-process session only for the checkout it found (and so that the session's
    ComfyUI status, which CI reports, says these tests ran).
    """
    root: Path = comfyui.root
    _link_pack(root)
    base = tmp_path_factory.mktemp("server")
    models, inputs, out = base / "models", base / "input", base / "output"
    for d in (models / "bonsai", models / "diffusion_models", out, base / "temp", base / "user"):
        d.mkdir(parents=True, exist_ok=True)
    we.install_fixtures(models, inputs, root)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"bonsai_tests:\n  base_path: {models}\n  bonsai: bonsai/\n  diffusion_models: diffusion_models/\n")
    port = we.free_port()
    cmd = [
        sys.executable, "main.py", "--cpu", "--port", str(port), "--listen", "127.0.0.1", "--disable-auto-launch",
        "--extra-model-paths-config", str(yaml), "--output-directory", str(out), "--input-directory", str(inputs),
        "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"), "--database-url", "sqlite:///:memory:",
        "--disable-api-nodes", "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR_NAME,
    ]  # fmt: skip
    log_path = base / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                info = _get_json(f"http://127.0.0.1:{port}/object_info")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(1.0)
        if info is None:
            pytest.fail(f"ComfyUI did not answer /object_info within {BOOT_TIMEOUT_S}s:\n{log_path.read_text(errors='replace')[-4000:]}")
        yield {"port": port, "out": out, "base": base, "root": root, "object_info": info, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


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
CASES = [("api", WORKFLOW), ("ui", WORKFLOW), ("ui", "bonsai_ternary_edit_2ref")]


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
