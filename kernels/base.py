"""The contract between the pack's runtime and its low-bit matmul backends.

``kernels/`` is a plain package: it imports torch (and, lazily, triton / gemlite / mlx) and
nothing from ``bonsai_core``. Everything a backend needs arrives through its arguments:

* the **weight object** (:class:`PackedLinearWeight`): the canonical packed codes and group
  scales plus the one dequantization formula, implemented once by the runtime
  (``bonsai_core.packing.PackedWeight`` satisfies this protocol);
* the **context** (:class:`KernelContext`) given at construction: where persistent caches may
  live and how a backend chooses among its internal variants (the runtime answers from its
  measured per-GPU tables; it never measures on a user's prompt).

Nothing in this package may fail at import because an optional package is missing; a backend
that cannot run reports why through :meth:`LowBitBackend.check`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

# Largest finite float8 e4m3fn value: the FP8 backends scale their operands into [-448, 448].
FP8_MAX = 448.0


class BackendUnavailable(RuntimeError):
    """Raised by :meth:`LowBitBackend.check` with a one-line, actionable reason."""


@runtime_checkable
class PackedLinearWeight(Protocol):
    """One linear layer's weight ``W [N, K]`` in the canonical packed form.

    * ``codes``: uint8 ``[N, K * bits / 8]``, LSB-first along K (code of element ``k`` in byte
      ``k // (8 // bits)`` at bit ``(k % (8 // bits)) * bits``);
    * ``scales``: ``[N, K / group_size]``, one magnitude ``s`` per group of ``group_size`` inputs;
    * ``value(q) = q * step + offset`` with ``(step, offset) = code_map``, and
      ``W[n, k] = value(q[n, k]) * s[n, k // group_size]``;
    * or, when ``zeros`` is not None (an *affine* layer, kept as its source file stored it),
      ``scales``/``zeros`` are ``(scale, zero)`` per group and ``W[n, k] = q * scale + zero``,
      evaluated in float32 and rounded once to the output dtype.

    Backends never restate these formulas: they call :meth:`dequantize` / :meth:`affine`, or
    read ``code_map`` / ``zeros`` to evaluate them inside a kernel, and are tested bit-exact
    against :meth:`dequantize`. A backend that cannot take a per-group zero computes
    ``F.linear(x, weight.dequantize(x.dtype))`` for affine layers instead.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    zeros: torch.Tensor | None

    @property
    def group_size(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    @property
    def in_features(self) -> int: ...

    @property
    def code_map(self) -> tuple[int, int]:
        """``(step, offset)``: the value of code ``q`` is ``q * step + offset`` (in {-1, 0, +1})."""
        ...

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense ``[N, K]`` weight in ``dtype`` (the scale is rounded to ``dtype`` first)."""
        ...

    def affine(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)``, each ``[N, K / group_size]`` in ``dtype``, with ``W = q * scale + zero``
        (the form gemlite and MLX consume). Exact whenever ``step * s`` is representable."""
        ...

    def max_abs(self) -> torch.Tensor:
        """float32 ``[N, K / group_size]``: the largest ``|W|`` of each group."""
        ...


# A backend's way to choose among its own implementations for one call:
# (namespace, weight, m tokens, activation dtype, candidates in static-preference order, device) -> name.
# ``candidates`` maps each name to a zero-argument callable that runs it once: the runtime's
# explicit tuning command may time them; on a user's prompt only a remembered answer or the
# first candidate is used (no measuring).
VariantChooser = Callable[[str, PackedLinearWeight, int, torch.dtype, Mapping[str, Callable[[], Any]], torch.device], str]


def first_candidate(
    namespace: str, weight: PackedLinearWeight, m: int, dtype: torch.dtype, candidates: Mapping[str, Callable[[], Any]], device: torch.device
) -> str:
    """The default chooser: the static preference (first candidate), never measures."""
    return next(iter(candidates))


@dataclass(frozen=True)
class KernelContext:
    """What the runtime hands a backend at construction.

    ``cache_dir(device)`` is a per-GPU, per-software-version folder for persistent kernel caches
    (or None: keep nothing on disk). ``choose`` picks among a backend's internal variants.
    """

    cache_dir: Callable[[torch.device], Path | None] = lambda device: None
    choose: VariantChooser = first_candidate


DEFAULT_CONTEXT = KernelContext()


class LowBitBackend(ABC):
    """``y = x @ W.T`` for a :class:`PackedLinearWeight` ``W``.

    ``state`` is a per-layer dict owned by the caller; a backend may keep prepared data there (a
    repacked weight, a kernel handle). The caller drops it when the layer moves or its weights
    change. ``exact`` says whether the result equals ``F.linear(x, W.dequantize(x.dtype))`` up to
    the accumulation order; inexact backends (FP8 activations) are only used when asked for.
    """

    name: ClassVar[str] = "?"
    exact: ClassVar[bool] = True

    def __init__(self, context: KernelContext = DEFAULT_CONTEXT) -> None:
        self.context = context

    @abstractmethod
    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        """Raise :class:`BackendUnavailable` if this backend cannot run here."""

    @abstractmethod
    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        """``x2d [M, K]`` (contiguous, compute dtype) -> ``[M, N]`` in ``x2d.dtype``."""


# How the runtime gets a backend: a factory taking the context. Factories import their module
# only when called, so listing backends never imports triton, gemlite or mlx.
BackendFactory = Callable[[KernelContext], LowBitBackend]
