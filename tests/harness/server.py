"""A ComfyUI server subprocess (``main.py --cpu``) started as a user starts it, with this pack in ``custom_nodes/``.

Only the folders differ from a user's start: models come from an ``extra_model_paths.yaml`` naming a
temporary root, and input, output, temp and user folders are temporary too. The process is always
terminated when the block ends."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .locate import PACK_DIR_NAME, link_pack

BOOT_TIMEOUT_S = 240  # server start on a busy 2-core CI machine


@dataclass
class RunningServer:
    """Where a started server listens and keeps its files, and its ``/object_info`` at start."""

    port: int
    root: Path  # the ComfyUI checkout
    base: Path  # the temporary folder holding models/, input/, output/, temp/, user/
    out: Path
    log: Path
    object_info: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (local test server)
        return json.loads(r.read())


def folders(base: Path) -> tuple[Path, Path, Path]:
    """(models, input, output) under ``base``, created (with ``models/bonsai``, ``models/diffusion_models``, temp, user)."""
    models, inputs, out = base / "models", base / "input", base / "output"
    for d in (models / "bonsai", models / "diffusion_models", inputs, out, base / "temp", base / "user"):
        d.mkdir(parents=True, exist_ok=True)
    return models, inputs, out


@contextlib.contextmanager
def comfyui_server(root: Path, base: Path, boot_timeout_s: float = BOOT_TIMEOUT_S) -> Iterator[RunningServer]:
    """Start ``main.py --cpu`` from the checkout ``root`` on a free port with the folders of :func:`folders`;
    yields once ``/object_info`` answers. Fails the test (with the end of the server log) when it exits or
    does not answer in time."""
    link_pack(root / "custom_nodes")
    models, inputs, out = folders(base)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"bonsai_tests:\n  base_path: {models}\n  bonsai: bonsai/\n  diffusion_models: diffusion_models/\n  loras: loras/\n")
    port = free_port()
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
        deadline = time.monotonic() + boot_timeout_s
        info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                info = get_json(f"http://127.0.0.1:{port}/object_info")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(1.0)
        if info is None:
            pytest.fail(f"ComfyUI did not answer /object_info within {boot_timeout_s}s:\n{log_path.read_text(errors='replace')[-4000:]}")
        yield RunningServer(port, root, base, out, log_path, info)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()
