"""Determinism shared by every synthetic piece: per-tensor random streams and the named sizes.

Each tensor draws from its own generator, seeded from ``sha256(namespace, seed, tensor name)``, so
any tensor can be produced alone (full-size fixtures stream to disk one layer at a time) and the
same seed always gives the same bytes, whatever order the writer asks for them in.
"""

from __future__ import annotations

import hashlib

import torch

from bonsai_core.klein import KLEIN_4B, KLEIN_TINY, KleinConfig

# ``tiny``: KLEIN_TINY, small enough for CPU tests; ``full``: the released Klein 4B geometry.
SIZES: dict[str, KleinConfig] = {"tiny": KLEIN_TINY, "full": KLEIN_4B}


def klein_config(size: str | KleinConfig) -> KleinConfig:
    """``"tiny"`` / ``"full"`` -> its KleinConfig; a KleinConfig is returned as is."""
    if isinstance(size, KleinConfig):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    return SIZES[size]


def tensor_generator(namespace: str, seed: int, name: str) -> torch.Generator:
    """The random stream of one tensor (``namespace`` keeps different kinds of fixture independent)."""
    digest = hashlib.sha256(f"{namespace}:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
