"""The packed linear as one torch custom op, so ``torch.compile`` (ComfyUI's stock
``TorchCompileModel`` node) traces a Bonsai model without a graph break in any linear.

Dynamo cannot trace into the backends (Triton launches, per-layer prepared state in Python
dicts, table look-ups). As ``bonsai_image::lowbit_linear`` the whole product is one opaque node
with a fake implementation that only states the output's shape and dtype, so the rest of the
block (norms, attention, modulation, LoRA branches, bias) is still compiled and fused around it.

A custom op takes tensors and plain values only, so the calling layer is named by a small
integer: :func:`register_layer` gives each layer one, and the op finds the layer's prepared
state through a weak registry. Eager calls skip the op dispatch (it costs tens of microseconds a
call, which matters at 512² where a step is launch-bound) and call the same function directly.

Graph replay (``TorchCompileModel`` with ``cudagraphs``, or Inductor's CUDA graphs): the op's body
runs during the graph's warm-up and capture, where every allocation comes from the graph's private
memory pool. A tensor allocated there and kept (a grown scratch, a prepared per-layer tensor)
outlives the capture, which torch rejects ("tensors in the cudagraph pool not tracked as outputs"),
and a kept tensor the graph recorded by address would be read after it was freed once the model is
unloaded and its memory reused. So the op's body keeps no tensor: the shared scratch hands out fresh
tensors (:meth:`kernels.triton_dequant.Scratch.transient`) and the layer's state is read, and written
only with plain values (a chosen kernel configuration), through :class:`_NoTensorState`. Tensors a
layer prepared in eager mode are still used (they are ordinary allocations, outside any pool).
"""

from __future__ import annotations

import itertools
import weakref
from collections import ChainMap
from typing import Any

import torch

from ..bonsai_core.dispatch import lowbit_linear
from ..bonsai_core.packing import PackedWeight
from ..kernels.triton_dequant import SCRATCH

OP_NAME = "bonsai_image::lowbit_linear"

_ids = itertools.count(1)
_layers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def register_layer(layer: Any) -> int:
    """A process-unique id for ``layer`` (kept only while the layer lives)."""
    uid = next(_ids)
    _layers[uid] = layer
    return uid


class _NoTensorState(ChainMap):  # type: ignore[type-arg]
    """A layer's state as the compiled op sees it: reads fall through to the layer's dict; plain
    values (kernel choices) are written through, anything holding a tensor stays in this call."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, (str, int, float, bool)) or (
            isinstance(value, tuple) and all(isinstance(v, (str, int, float, bool)) for v in value)
        ):
            self.maps[1][key] = value
        else:
            self.maps[0][key] = value


def packed_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    backend: str,
    layer_id: int,
    zeros: torch.Tensor | None = None,
    *,
    keep_tensors: bool = True,
) -> torch.Tensor:
    """``x @ W.T`` for the packed ``W`` of layer ``layer_id``, reusing that layer's prepared state
    when ``codes`` / ``scales`` are its resident buffers (an offloaded layer's streamed copy gets a
    throw-away state). ``zeros``: an affine layer's per-group zeros (``PackedWeight.zeros``).
    ``keep_tensors=False`` (the compiled op) keeps no tensor anywhere."""
    layer = _layers.get(layer_id)
    state: Any
    if layer is not None and layer.codes is not None and layer.codes.data_ptr() == codes.data_ptr() and layer.codes.device == codes.device:
        state = layer._resident_state(codes, scales)
    else:
        state = {}
    if not keep_tensors:
        state = _NoTensorState({}, state)
    weight = state.get("weight")
    if weight is None or weight.codes.data_ptr() != codes.data_ptr():
        # shapes were checked at load: the weight object (views of the buffers, no allocation)
        # is built once per placement (and per call for the compiled op's graph-input tensors)
        weight = state["weight"] = PackedWeight(codes, scales, bits, zeros=zeros)
    if keep_tensors:
        return lowbit_linear(x, weight, backend=backend, state=state)
    with SCRATCH.transient():
        return lowbit_linear(x, weight, backend=backend, state=state)


def _define() -> Any:
    ns, _, name = OP_NAME.partition("::")
    existing = getattr(getattr(torch.ops, ns), name, None) if hasattr(torch.ops, ns) else None
    if existing is not None:
        # a second copy of this module (the pack imported under another name, e.g. by tests):
        # the first definition stays; its registry does not know this copy's layers, which only
        # costs a prepared-state cache miss under compile, never a wrong result
        return existing

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def _op(
        x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, backend: str, layer_id: int, zeros: torch.Tensor | None
    ) -> torch.Tensor:
        y = packed_linear(x, codes, scales, bits, backend, layer_id, zeros, keep_tensors=False)
        # a custom op's output may not alias its inputs; lowbit_linear always returns a new tensor
        return y

    @_op.register_fake
    def _fake(
        x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, backend: str, layer_id: int, zeros: torch.Tensor | None
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], codes.shape[0]))

    return _op


_OP = _define()


def call(
    x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, backend: str, layer_id: int, zeros: torch.Tensor | None = None
) -> torch.Tensor:
    """The op under ``torch.compile``; the plain function otherwise."""
    if torch.compiler.is_compiling():
        return _OP(x, codes, scales, bits, backend, layer_id, zeros)
    return packed_linear(x, codes, scales, bits, backend, layer_id, zeros)
