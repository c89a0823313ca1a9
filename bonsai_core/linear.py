"""``BonsaiLinear``: a bias-free linear layer that holds a binary/ternary weight packed.

Buffers are the canonical ``codes`` (uint8 ``[N, K*bits/8]``) and ``scales`` (``[N, K/128]``);
no dense copy ever exists outside one forward call of the torch backend. Backends keep
prepared forms (gemlite's transposed pack, MLX arrays) in ``self.state``, which is emptied
whenever the module is moved/cast (``.to()``, ``.cuda()``, ``.half()`` all go through
``_apply``) or loads new weights.
"""

from __future__ import annotations

from typing import Any

import torch

from .dispatch import lowbit_linear
from .klein import GROUP_SIZE
from .packing import PackedWeight


class BonsaiLinear(torch.nn.Module):
    """``y = x @ W.T`` with ``W`` given by canonical packed codes and g128 scales."""

    codes: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        scales_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__()
        if bits not in (1, 2):
            raise ValueError(f"bits must be 1 (binary) or 2 (ternary), got {bits}")
        if in_features <= 0 or in_features % GROUP_SIZE:
            raise ValueError(f"in_features must be a positive multiple of {GROUP_SIZE}, got {in_features}")
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.backend = backend
        self.state: dict[str, Any] = {}
        self.register_buffer("codes", torch.zeros(out_features, in_features * bits // 8, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, in_features // GROUP_SIZE, dtype=scales_dtype, device=device))

    @classmethod
    def from_packed(cls, packed: PackedWeight, *, backend: str = "auto") -> BonsaiLinear:
        """Wrap a :class:`PackedWeight` (its tensors are used as they are, not copied)."""
        layer = cls(packed.in_features, packed.out_features, packed.bits, backend=backend, device="meta", scales_dtype=packed.scales.dtype)
        layer.codes = packed.codes
        layer.scales = packed.scales
        return layer

    def packed(self) -> PackedWeight:
        return PackedWeight(self.codes, self.scales, self.bits)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight (for checks and export; forward never needs it)."""
        return self.packed().dequantize(dtype)

    @property
    def variant(self) -> str:
        return "binary" if self.bits == 1 else "ternary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowbit_linear(x, self.codes, self.scales, self.bits, backend=self.backend, state=self.state)

    def _apply(self, fn: Any, recurse: bool = True) -> BonsaiLinear:
        # Prepared backend data belongs to the old device: drop it. Codes are uint8 (casts skip
        # them). Scales follow device moves but keep their dtype: ``.to(torch.bfloat16)`` on a
        # model would otherwise round fp16-exact scales and silently change the weights.
        self.state.clear()
        scales = self._buffers.pop("scales", None)
        try:
            result = super()._apply(fn, recurse)
        except BaseException:
            self._buffers["scales"] = scales
            raise
        if scales is not None:
            moved = fn(scales)
            self._buffers["scales"] = moved if moved.dtype == scales.dtype else scales.to(device=moved.device)
        return result  # type: ignore[no-any-return]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("codes", "scales") and "state" in self.__dict__:
            self.__dict__["state"].clear()
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        self.state.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.variant} (bits={self.bits}), g{GROUP_SIZE}, backend={self.backend!r}"
