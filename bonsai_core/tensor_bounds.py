"""The one rule every tensor read from a file must pass before it is used: memory follows bytes.

A tensor is a shape and strides over a storage. A container can describe far more elements than
it holds bytes for: a stride of 0 repeats one element over a whole layer, a storage smaller than
shape x stride reads past its end, overlapping strides or two tensors sharing bytes multiply what
the file holds. Materializing such a tensor (``.contiguous()``, ``.clone()``, a conversion) then
allocates what the *description* says, not what the file holds: a 27 KB archive asked for 15 GB.

:func:`layout_problem` is that rule on plain numbers (used on what a ``torch.save`` pickle
declares before ``torch.load`` runs, :mod:`bonsai_core.torch_pickle`); :func:`check_tensor`
applies it, plus layout, device and dtype, to a tensor every reader hands on (gemlite and HQQ
archives, safetensors, GGUF, MLX). A tensor passes when

* its layout is dense (``torch.strided``), it lives on the CPU (not ``meta``), it is a plain
  tensor (not quantized, nested or a subclass) of a real or integer dtype;
* its strides are those of a contiguous tensor *up to a permutation of the dimensions* (a
  transposed weight, as ``torch.save`` keeps a ``.t()`` view, is accepted and made contiguous by
  the reader at exactly its own size); a stride of 0, overlapping or gapped strides are refused;
* the elements it reaches lie inside its storage.

Then the bytes a reader can materialize from a tensor are exactly the bytes its storage holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .errors import BonsaiFormatError

MAX_NDIM = 8  # a Bonsai tensor has at most 2 dims; the safetensors reader allows 8 too
MAX_FIELD = 1 << 62  # any size, stride or offset above this cannot describe bytes on a disk

# dtypes a Bonsai container may hold (weights, codes, scales, metadata) -> bytes per element
DTYPES: dict[torch.dtype, int] = {
    dt: torch.empty((), dtype=dt).element_size()
    for dt in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool,
    )
}  # fmt: skip


def _fields_problem(shape: Sequence[object], stride: Sequence[object], offset: object) -> str | None:
    if len(shape) > MAX_NDIM:
        return f"has {len(shape)} dimensions; at most {MAX_NDIM} are accepted"
    if len(stride) != len(shape):
        return f"has {len(shape)} sizes but {len(stride)} strides"
    for what, values in (("size", shape), ("stride", stride), ("storage offset", (offset,))):
        for v in values:
            if type(v) is not int or not 0 <= v <= MAX_FIELD:
                return f"{what} {str(v)[:40]} is not an integer in 0..2**62"
    return None


def dense_problem(shape: Sequence[int], stride: Sequence[int]) -> str | None:
    """None when ``stride`` is the contiguous stride of ``shape`` up to a permutation of the
    dimensions (each element is one distinct place and no place is skipped), else why not."""
    dims = sorted((st, sz) for sz, st in zip(shape, stride) if sz > 1)
    if any(sz == 0 for sz in shape):
        return None  # no element at all
    expected = 1
    for st, sz in dims:
        if st == 0:
            return f"size {sz} with stride 0 repeats one element (shape {list(shape)}, strides {list(stride)})"
        if st != expected:
            kind = "overlap" if st < expected else "skip bytes (a strided slice)"
            return f"strides {list(stride)} of shape {list(shape)} {kind}; only contiguous or transposed tensors are read"
        expected *= sz
    return None


def extent(shape: Sequence[int], stride: Sequence[int], offset: int) -> int:
    """Elements of storage a strided view reaches: one past its last element (0 when empty)."""
    if any(sz == 0 for sz in shape):
        return 0
    return offset + 1 + sum((sz - 1) * st for sz, st in zip(shape, stride))


def layout_problem(shape: Sequence[object], stride: Sequence[object], offset: object, itemsize: int, storage_nbytes: int) -> str | None:
    """The rule on plain numbers: None when a view (``shape``, ``stride``, ``offset`` in elements
    of ``itemsize`` bytes) is dense and lies inside a storage of ``storage_nbytes``, else why not."""
    problem = _fields_problem(shape, stride, offset)
    if problem:
        return problem
    shape_i = [int(s) for s in shape]  # type: ignore[call-overload]
    stride_i = [int(s) for s in stride]  # type: ignore[call-overload]
    problem = dense_problem(shape_i, stride_i)
    if problem:
        return problem
    need = max(extent(shape_i, stride_i, int(offset)), int(offset)) * itemsize  # type: ignore[call-overload]
    if need > storage_nbytes:
        return f"shape {shape_i} at offset {offset} needs {need} bytes but its storage holds {storage_nbytes}"
    return None


def check_tensor(path: object, name: str | None, t: torch.Tensor) -> torch.Tensor:
    """Refuse a tensor that is sparse, on ``meta`` or another non-CPU device, quantized, nested, a
    subclass, of an unknown dtype, or whose view is not dense inside its storage (module docstring);
    returns ``t`` unchanged (nothing is read or copied)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise BonsaiFormatError(path, name, f"is a {type(t).__name__}, not a plain tensor")
    if t.layout != torch.strided:
        raise BonsaiFormatError(path, name, f"has layout {t.layout}; only dense tensors are read")
    if t.is_quantized or t.is_nested:
        raise BonsaiFormatError(path, name, "is a quantized or nested torch tensor; only plain dense tensors are read")
    if t.device.type != "cpu":
        why = " (no data: a meta tensor)" if t.device.type == "meta" else ""
        raise BonsaiFormatError(path, name, f"lives on device {t.device.type}{why}; weights must be read from the file")
    itemsize = DTYPES.get(t.dtype)
    if itemsize is None:
        raise BonsaiFormatError(path, name, f"dtype {t.dtype} is not one a Bonsai file holds")
    problem = layout_problem(tuple(t.shape), t.stride(), t.storage_offset(), itemsize, t.untyped_storage().nbytes())
    if problem:
        raise BonsaiFormatError(path, name, problem)
    return t


def walk_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf) of every tensor in nested dicts, lists and tuples (iteratively)."""
    stack: list[tuple[str, Any]] = [(prefix, obj)]
    seen: set[int] = set()  # a pickle can build a list that holds itself
    while stack:
        name, v = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if id(v) in seen:
                continue
            seen.add(id(v))
        if isinstance(v, dict):
            stack.extend((f"{name}.{k}" if name else str(k), c) for k, c in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{name}.{i}" if name else str(i), c) for i, c in reversed(list(enumerate(v))))
        elif isinstance(v, torch.Tensor):
            yield name, v


def check_tensors(path: object, obj: Any) -> Any:
    """:func:`check_tensor` on every tensor inside ``obj`` (a loaded archive); returns ``obj``."""
    for name, t in walk_tensors(obj):
        check_tensor(path, name, t)
    return obj
