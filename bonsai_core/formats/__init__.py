"""Readers and writers for every layout Bonsai Image 4B is published in.

:data:`FORMATS` (``registry.py``) is the one list of layouts, each with its reader
(``path, variant -> BonsaiCheckpoint``) and writer (``ckpt, out -> Path``);
:func:`open_checkpoint` detects the layout of a path and calls its reader. Readers convert a
layout *to canonical codes*; the dequantization formula itself lives only in
:mod:`bonsai_core.packing`.
"""

from __future__ import annotations

from .detect import detect_format, open_checkpoint
from .registry import FORMAT_NAMES, FORMATS, Format, get_format

__all__ = ["FORMATS", "FORMAT_NAMES", "Format", "detect_format", "get_format", "open_checkpoint"]
