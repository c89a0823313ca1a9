"""Bonsai Image 4B core: read every released weight format, hold weights packed, dequantize
exactly, and dispatch low-bit matmul to a backend. Imports nothing from ComfyUI.

The public names below are imported on first use (PEP 562), so that commands which never touch
tensors (``download``, ``--help``) start without importing torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> submodule that defines it
_EXPORTS = {
    "BonsaiCheckpoint": ".checkpoint",
    "BonsaiMeta": ".checkpoint",
    "BonsaiFormatError": ".errors",
    "GROUP_SIZE": ".klein",
    "KLEIN_4B": ".klein",
    "KLEIN_TINY": ".klein",
    "KleinConfig": ".klein",
    "PackedWeight": ".packing",
    "dequantize": ".packing",
    "pack_codes": ".packing",
    "unpack_codes": ".packing",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
