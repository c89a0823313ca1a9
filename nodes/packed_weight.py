"""The ``weight`` a packed Bonsai linear shows to ComfyUI's generic code.

ComfyUI's model management, LoRA and saving code read ``module.weight`` of every layer they touch
(``get_key_weight``, ``comfy.lora.calculate_shape(patches, m.weight, key)`` in newer
``ModelPatcher.load`` / ``partially_unload``, offload estimates, backups, ``state_dict_for_saving``).
A packed layer keeps its bytes in the ``codes`` / ``scales`` buffers; its ``weight`` is a *view* of
those same tensors as ComfyUI's own quantized-weight type, a comfy-kitchen ``QuantizedTensor`` with
the layout registered here (:data:`LAYOUT_NAME`):

* logical shape ``[out, in]`` and the model's compute dtype; ``nbytes`` = packed bytes;
* ``.to(device)`` / ``.to(dtype)`` / ``.detach()`` / ``.clone()`` give a moved or re-labelled copy,
  never a dense one (comfy-kitchen's generic handlers);
* ``.dequantize()`` and every op without a handler go through :meth:`PackedWeight.dequantize`
  (the one formula in ``bonsai_core/packing.py``); ``F.linear`` with it runs the exact Bonsai
  matmul without a dense copy;
* ``.state_dict(prefix)`` gives the layer's own checkpoint keys (``weight`` + ``weight_scale``, and
  ``weight_zero`` for an affine layer, whose per-group zeros ride along in the view's params);
* in-place arithmetic on it raises: ComfyUI's merge path writes the merged weight through the
  layer's ``set_weight`` (which keeps the codes; LoRA stays unmerged), so an in-place write on the
  view would be a silent no-op on a temporary copy.

Without comfy-kitchen (ComfyUI then runs without its own FP8/FP4 too) the view falls back to a
plain dense tensor dequantized on each access: correct, slower, logged once.
The decision between this layout and a tensor subclass of our own is recorded in docs/DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..bonsai_core.dispatch import AUTO, lowbit_linear
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.packing import PackedWeight

log = escaping_logger("bonsai_image.packed_weight")

LAYOUT_NAME = "BonsaiPackedLayout"


class PackedWeightWriteError(RuntimeError):
    """Generic code tried to change a packed weight in place (it stays binary/ternary)."""


def _quant_api() -> dict[str, Any] | None:
    """comfy-kitchen's layout API as ComfyUI ships it, or None when it is not there (feature detection)."""
    try:
        import comfy.quant_ops as qo
        from comfy_kitchen.tensor import BaseLayoutParams, QuantizedLayout
    except ImportError as e:
        log.info("comfy-kitchen layouts unavailable (%s): packed layers show a dequantized weight on access", e)
        return None
    needed = ("QuantizedTensor", "register_layout_class", "register_layout_op")
    missing = [n for n in needed if not hasattr(qo, n)]
    if missing or not getattr(qo, "_CK_AVAILABLE", True):
        log.info("comfy.quant_ops lacks %s: packed layers show a dequantized weight on access", missing or "comfy-kitchen")
        return None
    return {
        "QuantizedTensor": qo.QuantizedTensor,
        "register_layout_class": qo.register_layout_class,
        "register_layout_op": qo.register_layout_op,
        "BaseLayoutParams": BaseLayoutParams,
        "QuantizedLayout": QuantizedLayout,
    }


def _as_packed(qdata: torch.Tensor, params: Any) -> PackedWeight:
    return PackedWeight(qdata, params.scale, params.bits, zeros=params.zero)


def _define_layout(api: dict[str, Any]) -> tuple[type, type]:
    base_params, base_layout = api["BaseLayoutParams"], api["QuantizedLayout"]

    @dataclasses.dataclass(frozen=True)
    class BonsaiPackedParams(base_params):  # type: ignore[misc,valid-type]
        """``scale`` = the per-128-group scales (kept in their exact dtype); ``bits`` = 1 or 2; ``zero``
        = an affine layer's per-group zeros (``PackedWeight.zeros``), else None."""

        bits: int = 1
        zero: torch.Tensor | None = None

        def _tensor_fields(self) -> list[str]:  # moved, cloned and counted with the codes
            return ["scale"] if self.zero is None else ["scale", "zero"]

    class BonsaiPackedLayout(base_layout):  # type: ignore[misc,valid-type]
        """Canonical Bonsai codes (uint8 ``[N, K*bits/8]``) + group scales, as a comfy-kitchen layout."""

        Params = BonsaiPackedParams

        @classmethod
        def quantize(cls, tensor: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
            # Re-quantizing a merged weight to 1-2 bits would destroy a LoRA; Bonsai layers never do it.
            raise PackedWeightWriteError("Bonsai weights are never re-quantized from a dense weight (LoRA is applied as unmerged branches)")

        @classmethod
        def dequantize(cls, qdata: torch.Tensor, params: Any) -> torch.Tensor:
            return _as_packed(qdata, params).dequantize(params.orig_dtype)

        @classmethod
        def get_plain_tensors(cls, qtensor: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return qtensor._qdata, qtensor._params.scale

        @classmethod
        def state_dict_tensors(cls, qdata: torch.Tensor, params: Any) -> dict[str, torch.Tensor]:
            # suffixes after "<layer>.weight": the layer's own checkpoint keys (weight, weight_scale[, weight_zero])
            out = {"": qdata, "_scale": params.scale}
            if params.zero is not None:
                out["_zero"] = params.zero
            return out

    api["register_layout_class"](LAYOUT_NAME, BonsaiPackedLayout)
    op = api["register_layout_op"]

    @op(torch.ops.aten.linear.default, BonsaiPackedLayout)
    def _linear(qt: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if not isinstance(w, api["QuantizedTensor"]) or isinstance(x, api["QuantizedTensor"]):
            return torch.nn.functional.linear(*(a.dequantize() if isinstance(a, api["QuantizedTensor"]) else a for a in args[:3]))
        y = lowbit_linear(x, _as_packed(w._qdata, w._params), backend=AUTO)
        return y if bias is None else y + bias.to(y.dtype)

    def _refuse_write(qt: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        raise PackedWeightWriteError(
            "in-place arithmetic on a packed Bonsai weight would only change a temporary dense copy; "
            "call .dequantize() first (ComfyUI's merge path does, through the layer's convert_weight)"
        )

    for name in ("add_", "sub_", "mul_", "div_", "addcmul_", "lerp_"):
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            op(getattr(packet, overload), BonsaiPackedLayout)(_refuse_write)
    return BonsaiPackedParams, BonsaiPackedLayout


_API = _quant_api()
_PARAMS, _LAYOUT = _define_layout(_API) if _API is not None else (None, None)
_warned_fallback = False


def quantized_views() -> bool:
    """Whether packed weights are shown as ComfyUI ``QuantizedTensor`` views (else dense on access)."""
    return _API is not None


def is_packed_view(t: Any) -> bool:
    """A weight view made by :func:`packed_view` (of any layer)."""
    return _API is not None and isinstance(t, _API["QuantizedTensor"]) and getattr(t, "_layout_cls", None) == LAYOUT_NAME


def packed_view(
    codes: torch.Tensor, scales: torch.Tensor, bits: int, dtype: torch.dtype, zeros: torch.Tensor | None = None
) -> torch.Tensor:
    """``codes`` / ``scales`` (/ an affine layer's ``zeros``) as a logical ``[out, in]`` weight of
    ``dtype`` (no copy of the bytes)."""
    global _warned_fallback
    n, k = codes.shape[0], scales.shape[1] * PackedWeight(codes, scales, bits, zeros=zeros).group_size
    if _API is None:
        if not _warned_fallback:
            log.warning("comfy-kitchen is missing: packed layers' weight is dequantized on each access (slower model loads)")
            _warned_fallback = True
        return PackedWeight(codes, scales, bits, zeros=zeros).dequantize(dtype)
    params = _PARAMS(scale=scales, orig_dtype=dtype, orig_shape=(n, k), bits=bits, zero=zeros)
    return _API["QuantizedTensor"](codes, LAYOUT_NAME, params)


def view_tensors(t: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(codes, scales, bits) behind a view made by :func:`packed_view`."""
    return t._qdata, t._params.scale, t._params.bits


def view_zeros(t: Any) -> torch.Tensor | None:
    """The affine zeros behind a view made by :func:`packed_view` (None for a canonical layer)."""
    return t._params.zero
