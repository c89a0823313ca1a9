"""The in-between representation every reader produces and every writer consumes.

A :class:`BonsaiCheckpoint` is BFL/ComfyUI-named and lazy: quantized linears come out as
:class:`PackedWeight`, dense tensors as tensors, one at a time, so converting a full-size
model holds about one layer beyond the output in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .klein import GROUP_SIZE, KleinConfig
from .packing import VARIANT_BITS, PackedWeight

FORMAT_VERSION = 1
CANONICAL_MARKER = "bonsai-canonical"  # __metadata__["bonsai_format"] of a canonical file


@dataclass(frozen=True)
class BonsaiMeta:
    """What a Bonsai transformer is, independent of how it is stored."""

    variant: str  # "binary" | "ternary"
    config: KleinConfig
    source_format: str
    source_repo: str = ""
    source_sha256: str = ""
    group_size: int = GROUP_SIZE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_BITS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {sorted(VARIANT_BITS)}")
        if self.group_size != GROUP_SIZE:
            raise ValueError(f"group size {self.group_size} is not supported (Bonsai uses {GROUP_SIZE})")

    @property
    def bits(self) -> int:
        return VARIANT_BITS[self.variant]

    def to_metadata(self) -> dict[str, str]:
        """The safetensors ``__metadata__`` of a canonical file (all values are strings)."""
        return {
            "bonsai_format": CANONICAL_MARKER,
            "bonsai_format_version": str(self.format_version),
            "variant": self.variant,
            "bits": str(self.bits),
            "group_size": str(self.group_size),
            "source_format": self.source_format,
            "source_repo": self.source_repo,
            "source_sha256": self.source_sha256,
            "klein_config": json.dumps(self.config.as_dict(), sort_keys=True),
        }


@dataclass
class BonsaiCheckpoint:
    """A lazily read Bonsai transformer with BFL keys.

    ``packed_shapes``: BFL linear key (``...qkv.weight``) -> logical (out, in).
    ``dense_shapes``: every other key -> (dtype, shape).
    ``load_packed`` / ``load_dense`` read one entry; they are set by the reader.
    """

    path: Path
    meta: BonsaiMeta
    packed_shapes: dict[str, tuple[int, int]]
    dense_shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    load_packed: Callable[[str], PackedWeight]
    load_dense: Callable[[str], torch.Tensor]
    bytes_on_disk: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def items(self) -> Iterator[tuple[str, PackedWeight | torch.Tensor]]:
        """Every entry in a stable order (dense first, then quantized), loaded one at a time."""
        for k in self.dense_shapes:
            yield k, self.load_dense(k)
        for k in self.packed_shapes:
            yield k, self.load_packed(k)

    def summary(self) -> dict[str, object]:
        """What ``inspect`` prints."""
        m = self.meta
        return {
            "path": str(self.path),
            "variant": m.variant,
            "source_format": m.source_format,
            "source_repo": m.source_repo,
            "bits": m.bits,
            "group_size": m.group_size,
            "quantized_tensors": len(self.packed_shapes),
            "dense_tensors": len(self.dense_shapes),
            "bytes_on_disk": self.bytes_on_disk,
            "transformer_config": m.config.as_dict(),
        }
