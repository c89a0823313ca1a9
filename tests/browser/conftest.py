"""Fixtures of the browser tests: a real ComfyUI server whose models root switches between states, and Chromium.

The test modules skip themselves (with the reason) when Chromium or playwright is missing; these
fixtures import playwright only when a test asks for them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness.workflows as we
import pytest
from browser_env import CHROMIUM_ARGS, find_chromium
from harness.server import comfyui_server


@pytest.fixture(scope="module")
def site(comfyui: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The server, and ``use(kind)`` switching its models root between ``"empty"`` and ``"full"``."""
    base = tmp_path_factory.mktemp("browser")
    roots = {kind: base / f"models_{kind}" for kind in ("empty", "full", "snapshots", "mixed")}
    for root in roots.values():
        for kind in ("bonsai", "diffusion_models", "loras"):
            (root / kind).mkdir(parents=True, exist_ok=True)
    we.install_fixtures(roots["full"], base / "input", comfyui.root)
    install_other_states(roots, comfyui.root)
    link = base / "models"  # what the server's extra_model_paths.yaml names

    def use(kind: str) -> None:
        tmp = base / f".models.{kind}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(roots[kind], target_is_directory=True)
        os.replace(tmp, link)  # atomic: the server never sees the folder missing

    use("full")
    with comfyui_server(comfyui.root, base) as server:
        yield {"url": server.url, "out": server.out, "use": use}


def install_other_states(roots: dict[str, Path], comfy_root: Path) -> None:
    """``snapshots``: the gemlite releases as downloaded (no --to-canonical file). ``mixed``: a user who holds
    another release (ternary MLX), an interrupted gemlite download, and a release copied into diffusion_models."""
    from bonsai_tools.synth import make_snapshot_fixture

    full_bonsai = roots["full"] / "bonsai"
    for snap in full_bonsai.iterdir():
        if snap.is_dir():
            (roots["snapshots"] / "bonsai" / snap.name).symlink_to(snap, target_is_directory=True)
    tok = comfy_root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    mixed = roots["mixed"]
    make_snapshot_fixture("ternary", "mlx", mixed / "bonsai", seed=3, tokenizer_src=tok)
    partial = make_snapshot_fixture("ternary", "gemlite", mixed / "bonsai", seed=3, tokenizer_src=tok)
    shutil.rmtree(partial / "transformer-gemlite-int2")
    cache = partial / ".cache" / "huggingface" / "download" / "transformer-gemlite-int2"
    cache.mkdir(parents=True)
    (cache / "Qm9uc2Fp.0a1b2c.incomplete").write_bytes(b"\0" * 4096)
    (mixed / "diffusion_models" / "bonsai-image-binary-4B-gemlite-1bit" / "transformer-gemlite-int1").mkdir(parents=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("BONSAI_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out
