"""THE list of weight layouts: one entry per format with its reader and writer.

The CLI's choices, detection, conversion, the loaders and the tests all read :data:`FORMATS`;
no other module lists the formats. Readers and writers are named as ``module:function`` and
imported on first use, so the ``gguf`` package is only needed for GGUF files and importing the
registry never pulls in a reader.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import BonsaiCheckpoint
from ..packing import VARIANT_BITS


@dataclass(frozen=True)
class Format:
    """One layout: what it is, which variants it can hold, where its reader and writer live.

    Reader: ``read(path, variant=None, **opened) -> BonsaiCheckpoint`` (``opened`` carries a
    reader detection already opened, so a file is opened once per load). Writer:
    ``write(ckpt, out) -> Path`` (the file or pack folder written, atomically)."""

    name: str
    description: str
    variants: tuple[str, ...]
    reader: str
    writer: str
    single_file: bool  # True: the layout is one file; False: a pack folder inside a snapshot

    def _resolve(self, ref: str) -> Callable[..., Any]:
        module, _, func = ref.partition(":")
        return getattr(importlib.import_module(module, __package__), func)

    def read(self, path: str | os.PathLike[str], variant: str | None = None, **opened: Any) -> BonsaiCheckpoint:
        return self._resolve(self.reader)(Path(path), variant, **opened)

    def write(self, ckpt: BonsaiCheckpoint, out: str | os.PathLike[str]) -> Path:
        return self._resolve(self.writer)(ckpt, Path(out))

    def holds(self, variant: str) -> bool:
        return variant in self.variants


_BOTH = tuple(sorted(VARIANT_BITS))

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("canonical", "one .safetensors: BFL keys, uint8 codes + fp16 scales (this pack's own file)", _BOTH,
               "..canonical:read_canonical", "..canonical:write_canonical", True),
        Format("gemlite", "transformer-gemlite-int{1,2}/state_dict.pt (torch zip archive, CUDA releases)", _BOTH,
               ".gemlite:read_gemlite", ".gemlite:write_gemlite", False),
        Format("mlx", "transformer-packed-mflux/diffusion_pytorch_model.safetensors (Apple releases)", _BOTH,
               ".mlx:read_mlx", ".mlx:write_mlx", False),
        Format("unpacked", "transformer/diffusion_pytorch_model.safetensors, dense bf16 (unpacked releases)", _BOTH,
               ".unpacked:read_unpacked", ".unpacked:write_unpacked", False),
        Format("gguf", "one .gguf, block linears as ggml Q1_0 (binary) or a ternary block type (community conversions; written as Q1_0 only)", ("binary",),
               ".gguf:read_gguf", ".gguf:write_gguf", True),
    )
}  # fmt: skip
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str) -> Format:
    """The registry entry for ``name``; ValueError listing the known names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(FORMAT_NAMES)}") from None
