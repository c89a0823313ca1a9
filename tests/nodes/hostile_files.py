"""Hostile and unlucky model files, planted where users put models (shared by the in-process and server tests)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

PACK_NODES = {"BonsaiModelLoader", "BonsaiTextEncoderLoader", "BonsaiVAELoader", "BonsaiPipelineLoader", "BonsaiSampler"}


def _safetensors(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + payload


def plant_bad_files(models: Path) -> list[str]:
    """Write the hostile entries under ``models`` (``diffusion_models/`` and ``bonsai/``); returns their names."""
    d, b = models / "diffusion_models", models / "bonsai"
    d.mkdir(parents=True, exist_ok=True)
    b.mkdir(parents=True, exist_ok=True)
    files = {
        d / "bad-random.safetensors": os.urandom(4096),
        d / "bad-terabyte-header.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        d / "bad-deep-header.safetensors": _safetensors(b"[" * 100_000),
        d / "bad-nan-shape.safetensors": _safetensors(
            b'{"__metadata__": {"bonsai_format": "canonical"}, "x": {"dtype": "F16", "shape": [NaN], "data_offsets": [0, 2]}}', b"\0\0"
        ),
        d / "bad-empty.safetensors": b"",
        b / "bad-unpacked" / "transformer" / "config.json": b'{"_class_name": "Flux2Transformer2DModel"}',
        b / "bad-unpacked" / "transformer" / "diffusion_pytorch_model.safetensors": _safetensors(
            b'{"a": {"dtype": "BF16", "shape": [1e999]}}'
        ),
        b / "bad-gemlite" / "transformer-gemlite-int2" / "state_dict.pt": b"PK\x03\x04" + os.urandom(512),
        b / "bad-vae" / "vae" / "config.json": b'{"_class_name": "AutoencoderKLFlux2", "latent_channels": 1e999}',
        b / "bad-vae" / "vae" / "diffusion_pytorch_model.safetensors": os.urandom(100),
        b / "bad-te" / "text_encoder-hqq-4bit" / "config.json": b'{"model_type": "qwen3", "hidden_size": ' + b"9" * 5000 + b"}",
        b / "bad-te" / "text_encoder-hqq-4bit" / "qmodel.pt": os.urandom(64),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (b / "fifo-te").mkdir(exist_ok=True)
    os.mkfifo(b / "fifo-te" / "config.json")  # opening it for reading would block forever
    (b / "fifo-te" / "model.safetensors").write_bytes(b"")
    (b / "loop").mkdir(exist_ok=True)
    os.symlink(b / "loop", b / "loop" / "again")
    return sorted(p.relative_to(models).as_posix() for p in files)
