"""A real ``main.py --cpu`` server started with hostile files already in its model folders.

The pack must import at startup with every node, ``/object_info`` (all nodes and one node) must answer
200, a prompt naming a bad file is refused with one line, and a prompt with a good model runs.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness.server import comfyui_server, folders, get_json
from hostile_files import PACK_NODES, plant_bad_files

from bonsai_tools.synth import make_fixture

pytestmark = pytest.mark.comfyui


def post_prompt(url: str, prompt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
    req = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (local test server)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(url: str, prompt_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = get_json(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish within {timeout_s}s")


def loader_prompt(model_name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "BonsaiModelLoader", "inputs": {"model_name": model_name, "backend": "auto", "compute_dtype": "default"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def test_server_with_bad_files_keeps_the_pack(comfyui: Any, tmp_path: Path) -> None:
    models, _inputs, _out = folders(tmp_path)
    bad = plant_bad_files(models)
    make_fixture("binary", "tiny", "canonical", 0, models / "bonsai" / "good-binary.safetensors")
    with comfyui_server(comfyui.root, tmp_path) as server:
        log = server.log.read_text(errors="replace")
        assert PACK_NODES <= set(server.object_info), f"pack nodes missing at startup:\n{log[-4000:]}"
        assert "IMPORT FAILED" not in log and "is unavailable" not in log, log[-4000:]
        one = get_json(f"{server.url}/object_info/BonsaiModelLoader")  # HTTP 500 before, when a listing raised
        options = one["BonsaiModelLoader"]["input"]["required"]["model_name"][1]["options"]
        assert "good-binary.safetensors" in options
        assert not [o for o in options if Path(o.rstrip("/")).name in {Path(b).name for b in bad}], options

        status, answer = post_prompt(server.url, loader_prompt("bad-random.safetensors"))
        assert status == 400
        details = answer["node_errors"]["1"]["errors"][0]["details"]
        assert "bad-random.safetensors" in details and "\n" not in details, details

        status, answer = post_prompt(server.url, loader_prompt("good-binary.safetensors"))
        assert status == 200, answer
        done = wait_for(server.url, answer["prompt_id"])
        assert done["status"]["status_str"] == "success", done["status"]
        assert get_json(f"{server.url}/object_info/BonsaiVAELoader")  # still serving
