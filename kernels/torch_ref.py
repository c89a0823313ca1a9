"""Reference backend: the weight object's own dequantization, then ``F.linear``.

Runs wherever torch runs (CPU, CUDA, ROCm, XPU, MPS). The dense weight exists only for the
duration of one call (one layer at a time) and is never cached: holding it would defeat the
point of packed weights. Every other backend is tested against this one.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import BackendUnavailable, LowBitBackend, PackedLinearWeight

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class TorchReferenceBackend(LowBitBackend):
    name = "torch"

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if bits not in (1, 2):
            raise BackendUnavailable(f"bits={bits} is not binary (1) or ternary (2)")
        if dtype not in _FLOATS:
            raise BackendUnavailable(f"activation dtype {dtype} is not float16/bfloat16/float32")

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        # The weight is built in the activation dtype: values are {-1, 0, +1} * s, so the only
        # rounding is s itself (exact for fp16-exact scales in fp16/fp32; bf16 rounds s to 8 bits,
        # as a dense bf16 checkpoint would).
        return torch.nn.functional.linear(x2d, weight.dequantize(x2d.dtype))
