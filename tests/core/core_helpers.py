"""Helpers shared by tests/core (named uniquely: test folders share one import namespace)."""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from bonsai_core.checkpoint import BonsaiCheckpoint
from bonsai_core.formats import FORMAT_NAMES

SEED = 7
VARIANTS = ("binary", "ternary")
FORMATS = FORMAT_NAMES  # the registry: a new layout is tested everywhere without editing the tests


def fixture_path(root: Path, variant: str, fmt: str) -> Path:
    ext = {"canonical": ".safetensors", "gguf": ".gguf"}.get(fmt, "")
    return root / f"{variant}-{fmt}{ext}"


def assert_same_weights(a: BonsaiCheckpoint, b: BonsaiCheckpoint) -> None:
    """Every tensor of ``a`` and ``b`` equal as fp32 (quantized ones dequantized)."""
    assert a.packed_shapes == b.packed_shapes
    assert {k: s for k, (_, s) in a.dense_shapes.items()} == {k: s for k, (_, s) in b.dense_shapes.items()}
    assert a.meta.variant == b.meta.variant and a.meta.config == b.meta.config
    for k in a.dense_shapes:
        assert torch.equal(a.load_dense(k).float(), b.load_dense(k).float()), k
    for k in a.packed_shapes:
        assert torch.equal(a.load_packed(k).dequantize(torch.float32), b.load_packed(k).dequantize(torch.float32)), k


def safetensors_body(path: Path) -> tuple[dict, bytes]:
    """(tensor header entries without metadata, data bytes) of a safetensors file."""
    import json

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n :]
