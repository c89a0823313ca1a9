"""Release-shaped repo trees for the Hub stand-in, and small helpers shared by the download tests."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from hub_server import HubServer

REPO_ROOT = Path(__file__).resolve().parents[2]
TERNARY_GEMLITE = "prism-ml/bonsai-image-ternary-4B-gemlite-2bit"
SNAP = "bonsai-image-ternary-4B-gemlite-2bit"


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def gemlite_repo_files() -> dict[str, bytes]:
    """The released gemlite repo's tree with small stand-in contents (every Hub repo also lists .gitattributes)."""
    return {
        ".gitattributes": b"*.pt filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# Bonsai Image 4B ternary (gemlite)\n",
        "manifest.json": b'{"model_version": "ternary g128"}\n',
        "model_index.json": b'{"_class_name": "Flux2KleinPipeline"}\n',
        "assets/banner.png": blob(3000, 1),
        "transformer-gemlite-int2/config.json": b'{"num_layers": 5}\n',
        "transformer-gemlite-int2/quantization_config.json": b'{"bits": 2}\n',
        "transformer-gemlite-int2/state_dict.pt": blob(300_000, 2),
        "text_encoder-hqq-4bit/config.json": b'{"model_type": "qwen3"}\n',
        "text_encoder-hqq-4bit/qmodel.pt": blob(200_000, 3),
        "text_encoder-hqq-4bit/tokenizer/tokenizer.json": blob(5000, 4),
        "vae/config.json": b'{"latent_channels": 32}\n',
        "vae/diffusion_pytorch_model.safetensors": blob(120_000, 5),
    }


EXPECTED = sorted(f for f in gemlite_repo_files() if not f.startswith(("assets/", ".")))


def resolve_gets(server: HubServer) -> list[tuple[str, str | None]]:
    """(file, Range header) of every file GET the stand-in served."""
    return [(p.split("/resolve/", 1)[1].split("/", 1)[1], r) for m, p, r in server.requests if m == "GET" and "/resolve/" in p]


def file_requests(server: HubServer) -> list[str]:
    """Every HEAD or GET of a file (anything but the repo listing)."""
    return [p for _m, p, _r in server.requests if "/resolve/" in p]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_cli(
    argv: list[str], *, endpoint: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300, **kw: object
) -> subprocess.CompletedProcess[str]:
    """``python <argv>`` (e.g. ``[".../bonsai.py", "download", ...]``) against the stand-in Hub."""
    full = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=full, cwd=cwd, timeout=timeout, **kw)  # type: ignore[call-overload]


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative POSIX name -> bytes), links not followed."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out
