"""Bonsai Image 4B core: read every released weight format, hold weights packed, dequantize
exactly, and dispatch low-bit matmul to a backend. Imports nothing from ComfyUI."""

from __future__ import annotations

import logging

from .checkpoint import BonsaiCheckpoint, BonsaiMeta
from .errors import BonsaiFormatError
from .klein import GROUP_SIZE, KLEIN_4B, KLEIN_TINY, KleinConfig
from .packing import PackedWeight, dequantize, pack_codes, unpack_codes

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "GROUP_SIZE",
    "KLEIN_4B",
    "KLEIN_TINY",
    "BonsaiCheckpoint",
    "BonsaiFormatError",
    "BonsaiMeta",
    "KleinConfig",
    "PackedWeight",
    "__version__",
    "dequantize",
    "pack_codes",
    "unpack_codes",
]
