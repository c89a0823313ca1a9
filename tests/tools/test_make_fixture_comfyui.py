"""A snapshot written by ``python -m bonsai_tools make-fixture --snapshot`` is a release ComfyUI loads:
the Bonsai pipeline loader lists it and gives a MODEL, a CLIP that encodes and a VAE, as it does for a
download (every release layout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bonsai_tools.synth import snapshot_repo_name

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("variant", "layout"), [("binary", "gemlite"), ("ternary", "mlx"), ("binary", "unpacked")])
def test_cli_snapshot_loads_in_the_pipeline_loader(comfyui: Any, module_models: Path, variant: str, layout: str) -> None:
    import comfy.model_patcher
    import comfy.sd

    name = snapshot_repo_name(variant, layout)
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    out = module_models / "bonsai" / name
    cmd = [sys.executable, "-m", "bonsai_tools", "make-fixture", "--snapshot", "--variant", variant, "--format", layout]
    cmd += ["--seed", "2", "--tokenizer", str(tok), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    node = comfyui.node_class("BonsaiPipelineLoader")
    assert f"{name}/" in node.INPUT_TYPES()["required"]["snapshot"][1]["options"]
    model, clip, vae = node.execute(f"{name}/", "auto", "default").result
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and type(clip) is comfy.sd.CLIP and type(vae) is comfy.sd.VAE
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a bonsai on a table"))
    assert cond[0][0].shape[-1] == 384  # 3 x the tiny text encoder's hidden size = the tiny transformer's context
    assert model.model.latent_format.latent_channels == vae.latent_channels == 128
