"""Readers and writers for every layout Bonsai Image 4B is published in.

Each layout module exposes ``read_<fmt>(path, variant=None) -> BonsaiCheckpoint`` and
``write_<fmt>(ckpt, out) -> Path``; :func:`bonsai_core.formats.detect.open_checkpoint` picks the
reader. Readers convert a layout *to canonical codes*; the dequantization formula itself lives
only in :mod:`bonsai_core.packing`.
"""

from __future__ import annotations

from .detect import detect_format, open_checkpoint

FORMATS = ("canonical", "gemlite", "mlx", "unpacked", "gguf")

__all__ = ["FORMATS", "detect_format", "open_checkpoint"]
