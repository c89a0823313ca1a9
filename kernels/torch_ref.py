"""Reference backend: unpack + scale with the one dequantization formula, then ``F.linear``.

Runs wherever torch runs (CPU, CUDA, ROCm, XPU, MPS). Only one layer is dense at a time.
"""

from __future__ import annotations

from typing import Any

import torch

from ..packing import dequantize
from .base import LowBitBackend


class TorchReferenceBackend(LowBitBackend):
    name = "torch"

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        return None

    def matmul(self, x2d: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, state: dict[str, Any]) -> torch.Tensor:
        w = dequantize(codes, scales, bits, dtype=x2d.dtype)
        return torch.nn.functional.linear(x2d, w)
