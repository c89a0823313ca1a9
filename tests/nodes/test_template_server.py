"""A tokenizer folder's chat template never runs: a nested-loop Jinja template through a real server.

The text-encoder loader cross-checks ComfyUI's Klein tokenizer against the folder's tokenizer. Before,
it rendered the folder's ``chat_template`` for that probe: a template with nested loops kept the
executor busy for hours, ``/interrupt`` could not stop it (the loop runs inside Jinja, where ComfyUI
never checks the flag) and every later prompt waited behind it. Now the probe uses ComfyUI's own fixed
Klein template and the folder's template is never rendered: the prompt finishes in seconds, and the
server takes ``/interrupt`` and the next prompt as usual.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness.server import comfyui_server, folders, get_json
from test_bad_files_server import post_prompt, wait_for

from bonsai_tools.synth import make_te_fixture

pytestmark = pytest.mark.comfyui

# 10^10 iterations (Jinja's sandbox allows ranges up to 100,000): hours of CPU and gigabytes if rendered
BOMB = "{% for a in range(99999) %}{% for b in range(99999) %}{{ a }}{{ b }}{% endfor %}{% endfor %}"
LABEL = "bonsai/hostile-template-te"


def plant_template_bomb(tokenizer: Path) -> None:
    (tokenizer / "chat_template.jinja").write_text(BOMB, encoding="utf-8")
    cfg_path = tokenizer / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg["chat_template"] = BOMB
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")


def encode_prompt(text: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "BonsaiTextEncoderLoader", "inputs": {"text_encoder": LABEL}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": text}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def status_of(entry: dict[str, Any]) -> str:
    return str(entry.get("status", {}).get("status_str"))


def test_template_bomb_in_tokenizer_folder_never_runs(comfyui: Any, tmp_path: Path) -> None:
    models, _inputs, _out = folders(tmp_path)
    te = models / "bonsai" / "hostile-template-te"
    make_te_fixture("hqq", "tiny", 11, te, tokenizer_src=comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer")
    plant_template_bomb(te / "tokenizer")
    with comfyui_server(comfyui.root, tmp_path) as server:
        code, body = post_prompt(server.url, encode_prompt("a red fox"))
        assert code == 200, body
        t0 = time.monotonic()
        first = wait_for(server.url, body["prompt_id"], timeout_s=120)
        took = time.monotonic() - t0
        log = server.log.read_text(errors="replace")
        assert status_of(first) == "success", (first.get("status"), log[-3000:])
        # the server still takes /interrupt and the next prompt at once
        req = urllib.request.Request(f"{server.url}/interrupt", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (local test server)
            assert r.status == 200
        code, body = post_prompt(server.url, encode_prompt("three birds at dusk"))
        assert code == 200, body
        second = wait_for(server.url, body["prompt_id"], timeout_s=120)
        assert status_of(second) == "success", second.get("status")
        assert get_json(f"{server.url}/queue")["queue_running"] == []
        print(f"first prompt (TE load + encode) {took:.1f} s")
