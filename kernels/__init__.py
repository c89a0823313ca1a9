"""Low-bit matmul backends, one per file, behind :class:`kernels.base.LowBitBackend`.

A plain package: it imports nothing from ``bonsai_core`` (the weight object and a small context
come in as arguments, see :mod:`kernels.base`) and nothing here fails at import because an
optional package (triton, gemlite, mlx) is missing.

The consumer hands :data:`BACKENDS` to the runtime's selection logic, e.g.
``bonsai_core.dispatch.register_backends(BACKENDS)`` (ComfyUI nodes, tooling, tests). A new
backend is one new module plus one line here.
"""

from __future__ import annotations

import importlib

from .base import BackendFactory, KernelContext, LowBitBackend


def _lazy(module: str, cls: str) -> BackendFactory:
    def factory(context: KernelContext) -> LowBitBackend:
        backend: LowBitBackend = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(context)
        return backend

    factory.__qualname__ = f"lazy_{module}"
    return factory


# name -> factory; the names are what users pick in the loader node and $BONSAI_BACKEND.
BACKENDS: dict[str, BackendFactory] = {
    "torch": _lazy("torch_ref", "TorchReferenceBackend"),
    "triton_dequant": _lazy("triton_dequant", "TritonDequantBackend"),
    "gemlite": _lazy("gemlite_backend", "GemliteBackend"),
    "mlx": _lazy("mlx_backend", "MLXBackend"),
    "fp8": _lazy("fp8_blockwise", "FP8BlockwiseBackend"),
    "fp8_rowwise": _lazy("fp8_rowwise", "FP8RowwiseBackend"),
    "fp8_rowwise_resident": _lazy("fp8_rowwise", "FP8RowwiseResidentBackend"),
}

__all__ = ["BACKENDS"]
