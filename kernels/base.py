"""The one interface every low-bit matmul backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class BackendUnavailable(RuntimeError):
    """Raised by :meth:`LowBitBackend.check` with a one-line, actionable reason."""


class LowBitBackend(ABC):
    """``y = x @ W.T`` where ``W`` is given as canonical packed codes + g128 scales.

    ``state`` is a per-layer dict owned by the calling module; a backend may keep prepared
    data there (a repacked weight, a kernel handle) keyed however it likes. It is dropped
    when the module is moved or its weights change.
    """

    name: str = "?"

    @abstractmethod
    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        """Raise :class:`BackendUnavailable` if this backend cannot run here."""

    @abstractmethod
    def matmul(self, x2d: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, state: dict[str, Any]) -> torch.Tensor:
        """``x2d [M, K]`` (contiguous, compute dtype) -> ``[M, N]`` in ``x2d.dtype``."""
