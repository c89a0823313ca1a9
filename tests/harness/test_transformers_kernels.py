"""The pack next to transformers inside ComfyUI: the pack's ``kernels/`` never takes the top-level name.

transformers 5.25 depends on Hugging Face's ``kernels`` package and imports it from
``transformers.modeling_utils`` (``integrations.hub_kernels``: ``from kernels import CUDAProperties, ...``).
If the pack's own ``kernels/`` were importable as ``kernels`` in ComfyUI's process, every later user of
transformers' modeling code there (other node packs, newer ComfyUI text encoders) would fail to import.
This boots ComfyUI in a fresh process the way ``main.py`` loads a custom node (repository not on
``sys.path``), runs the pack's node registration and a text encoder import, then imports transformers'
modeling code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.locate import REPO, pack_link

PROBE = """
import asyncio, importlib.util, json, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
sys.path.insert(0, {root!r})
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import nodes
ok = asyncio.run(nodes.load_custom_node({pack!r}))
pack = sys.modules[{pack!r}.replace(".", "_x_")]
nodes_found = [n.__name__ for n in pack.gather_nodes()]
import comfy.text_encoders.flux  # the Klein text encoder ComfyUI builds for our CLIP
spec = importlib.util.find_spec("kernels")
import transformers.modeling_utils  # imports Hugging Face's kernels when it is installed
hub = sys.modules.get("kernels")
print("RESULT " + json.dumps({{
    "loaded": ok,
    "nodes": nodes_found,
    "kernels_origin": None if spec is None else spec.origin,
    "kernels_module": None if hub is None else getattr(hub, "__file__", None),
    "pack_kernels": [m for m in sys.modules if m.endswith(".kernels") and m.startswith({pack!r}.replace(".", "_x_"))],
}}))
"""


def test_pack_inside_comfyui_leaves_kernels_to_transformers(comfyui: Any, tmp_path: Path) -> None:
    link = pack_link(comfyui.root)
    code = PROBE.format(root=str(comfyui.root), pack=str(link))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["loaded"] is True
    assert "BonsaiModelLoader" in result["nodes"], result["nodes"]
    own = (REPO / "kernels" / "__init__.py").resolve()
    for key in ("kernels_origin", "kernels_module"):
        assert result[key] is None or Path(result[key]).resolve() != own, (key, result[key])
    assert result["pack_kernels"], "the pack's backends were not imported as <pack>.kernels"
