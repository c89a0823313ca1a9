"""MLX backend: ``mx.quantized_matmul`` (affine, group 128, bits 1 or 2) on Apple silicon, and
on Linux CPU through ``mlx[cpu]`` (which is how CI exercises it).

Weights: the canonical codes viewed as little-endian uint32 *are* MLX's packed layout
(``uint32 [N, K*bits/32]``, LSB-first), and MLX's affine ``w = scales * q + biases`` is the
weight object's own ``affine()`` form (the runtime defines the formula once). Both are built once
per layer, in the activation dtype (MLX wants scales in the dtype of x),
and kept in the layer's ``state``. That copy lives in MLX's allocator (packed size plus the
scale/bias tables), next to the torch buffers.

Copies per call:
* torch (CPU) -> MLX: one copy of the activation. ``mx.from_dlpack`` cannot wrap a foreign CPU
  buffer ("Cannot import a CPU array without a copy", mlx 0.32.4), and ``mx.array(numpy)``
  copies too.
* MLX -> torch: none; ``torch.from_dlpack`` shares MLX's buffer (bf16 included).
* torch MPS tensors: MPS and MLX do not share allocations even though the memory is unified,
  so an MPS activation is copied to host, into MLX, and the result back to MPS (three copies).

Not run on Apple hardware by this project's CI: the Metal kernels, 1-bit ``quantized_matmul``
on stock Metal MLX (mlx 0.32.4 runs bits=1 on CPU; upstream Metal 1-bit was still an open PR in
2026-07, PrismML's fork carries it), MPS round trips, and any timing on a Mac.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from .base import BackendUnavailable, LowBitBackend, PackedLinearWeight

_TORCH_TO_MLX = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _import_mlx() -> Any:
    if importlib.util.find_spec("mlx") is None:
        raise BackendUnavailable("the mlx package is not installed (pip install 'mlx>=0.32.4'; on Linux 'mlx[cpu]')")
    try:
        import mlx.core as mx
    except Exception as e:  # a wheel for the wrong platform fails here, not at find_spec
        raise BackendUnavailable(f"mlx failed to import: {type(e).__name__}: {e}") from e
    return mx


def _to_mlx(t: torch.Tensor, mx: Any) -> Any:
    """A contiguous CPU torch tensor -> MLX array (one copy, bf16 kept as bf16)."""
    return mx.from_dlpack(t.contiguous())


def mlx_packed(codes: torch.Tensor) -> Any:
    """Canonical codes -> MLX ``uint32 [N, K*bits/32]`` (a reinterpretation, no repack)."""
    mx = _import_mlx()
    w = _to_mlx(codes.detach().to("cpu").contiguous(), mx).view(mx.uint32)  # little-endian bytes -> words
    mx.eval(w)
    return w


def mlx_affine(weight: PackedLinearWeight, dtype: torch.dtype) -> tuple[Any, Any]:
    """The weight's affine form -> MLX (scales, biases) in ``dtype``: w = scales * q + biases."""
    mx = _import_mlx()
    scale, zero = weight.affine(dtype)
    mlx_scales = _to_mlx(scale.detach().to("cpu"), mx)
    mlx_biases = _to_mlx(zero.detach().to("cpu"), mx)
    mx.eval(mlx_scales, mlx_biases)
    return mlx_scales, mlx_biases


class MLXBackend(LowBitBackend):
    name = "mlx"

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if device.type not in ("cpu", "mps"):
            raise BackendUnavailable(f"the MLX backend runs CPU or Apple (MPS) tensors, the input is on {device.type}")
        if bits not in (1, 2):
            raise BackendUnavailable(f"bits={bits} is not binary (1) or ternary (2)")
        if dtype not in _TORCH_TO_MLX:
            raise BackendUnavailable(f"activation dtype {dtype} is not float16/bfloat16/float32")
        mx = _import_mlx()
        if not hasattr(mx, "quantized_matmul") or not hasattr(mx, "from_dlpack"):
            raise BackendUnavailable(f"mlx {getattr(mx, '__version__', '?')} lacks quantized_matmul/from_dlpack; need mlx>=0.32.4")

    def _weights(self, weight: PackedLinearWeight, dtype: torch.dtype, state: dict[str, Any]) -> tuple[Any, Any, Any]:
        codes, scales = weight.codes, weight.scales
        key = (codes.device, codes.data_ptr(), scales.data_ptr(), tuple(codes.shape), weight.bits)
        cached = state.get("mlx")
        if cached is None or cached[0] != key:
            cached = (key, {})
            state["mlx"] = cached
        if "packed" not in cached[1]:
            cached[1]["packed"] = mlx_packed(codes)
        if dtype not in cached[1]:  # scales follow the activation dtype; the packed words do not
            cached[1][dtype] = mlx_affine(weight, dtype)
        return (cached[1]["packed"], *cached[1][dtype])

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        mx = _import_mlx()
        w, s, b = self._weights(weight, x2d.dtype, state)
        x_mx = _to_mlx(x2d.detach().to("cpu"), mx)
        y_mx = mx.quantized_matmul(x_mx, w, s, b, transpose=True, group_size=weight.group_size, bits=weight.bits)
        mx.eval(y_mx)
        y = torch.from_dlpack(y_mx)  # shares MLX's buffer (it stays alive through the capsule)
        return y.to(x2d.device) if x2d.device.type != "cpu" else y
