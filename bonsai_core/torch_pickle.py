"""What a ``torch.save`` pickle declares about its tensors, read before ``torch.load`` builds any.

``torch.load`` trusts the pickle's numbers: a tensor is rebuilt from a storage record (dtype,
element count, zip entry) and a view (offset, sizes, strides), and ``weights_only`` only limits
*which* objects are built, not what they describe. A storage record that claims more bytes than
its zip entry holds, or a view with stride 0 over a one-element storage, loads without error and
becomes gigabytes when a reader copies it.

:func:`declared_tensors` therefore reads the pickle with an unpickler that builds nothing of
torch: every global resolves to a plain record of this module (tensor rebuild calls become
:class:`TensorDecl`, storage ids :class:`StorageRef`), or the load is refused, so no code of the
file or of torch runs. :func:`check_declarations` then holds every declared tensor to
:mod:`bonsai_core.tensor_bounds`' rule against the sizes of the zip entries, and refuses meta,
sparse, quantized, nested and subclass tensors with one line naming the tensor. Only then does
:mod:`bonsai_core.torch_archive` let ``torch.load`` read the file.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BonsaiFormatError
from .tensor_bounds import DTYPES, layout_problem

_DTYPE_NAMES = {str(dt).removeprefix("torch."): dt for dt in DTYPES}
# torch's legacy typed storages (what torch.save names for the common dtypes)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip
# rebuild functions whose tensors hold no bytes of the file, or not as a dense view: refused by name
_REFUSED_KINDS = {
    "_rebuild_meta_tensor_no_storage": "a meta tensor (it holds no data)",
    "_rebuild_sparse_tensor": "a sparse tensor",
    "_rebuild_qtensor": "a quantized torch tensor",
    "_rebuild_nested_tensor": "a nested tensor",
    "_rebuild_wrapper_subclass": "a tensor subclass or a device tensor without stored data",
    "_rebuild_device_tensor_from_numpy": "a device tensor rebuilt from numpy",
    "_rebuild_device_tensor_from_cpu_tensor": "a device tensor",
}
# globals outside torch that torch's weights-only unpickler also admits (values only: never called here)
_PLAIN_GLOBALS = {("builtins", "set"), ("builtins", "complex"), ("builtins", "bytearray"), ("collections", "Counter"), ("_codecs", "encode")}


class _Opaque:
    """Any admitted object this module does not model (a device, a set...): built from nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


@dataclass(frozen=True)
class StorageRef:
    """A persistent id: ``('storage', storage type, key, location, element count)``."""

    dtype: torch.dtype | None  # None: a storage type that is not read (complex, quantized)
    type_name: str
    key: str
    location: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * (DTYPES[self.dtype] if self.dtype is not None else 1)


class _StorageType:
    def __init__(self, name: str, dtype: torch.dtype | None) -> None:
        self.name, self.dtype = name, dtype


@dataclass
class TensorDecl:
    """One tensor as the pickle declares it (nothing is read or allocated)."""

    args: tuple[Any, ...] = ()
    version: str = "v2"  # "v1"/"v2": dtype from the storage type; "v3": dtype is an argument
    refused: str | None = None  # set for tensor kinds that are never read
    extra: dict[str, Any] = field(default_factory=dict)


def _rebuild(version: str) -> Any:
    def build(*args: object, **kwargs: object) -> TensorDecl:
        return TensorDecl(tuple(args), version)

    return build


def _refuse(reason: str) -> Any:
    def build(*args: object, **kwargs: object) -> TensorDecl:
        return TensorDecl(tuple(args), refused=reason)

    return build


def _from_type(func: object, new_type: object, args: object, state: object = None) -> object:
    """``_rebuild_from_type_v2``: a tensor with Python attributes, or a subclass."""
    if not callable(func) or not isinstance(args, tuple):
        return _Opaque()
    out = func(*args)
    if isinstance(out, TensorDecl) and new_type not in (_TENSOR, _PARAMETER):
        out.refused = "a tensor subclass"
    return out


def _param(data: object, *args: object) -> object:
    return data


_TENSOR, _PARAMETER = object(), object()


class _Inspector(pickle.Unpickler):
    """Unpickler whose globals are this module's records; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils":
            if name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
                return _rebuild({"_rebuild_tensor": "v1", "_rebuild_tensor_v2": "v2"}.get(name, "v3"))
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return _param
            if name.startswith("_rebuild"):
                return _refuse(_REFUSED_KINDS.get(name, f"a tensor rebuilt by torch._utils.{name}"))
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _from_type
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch", "Size"):
            return tuple
        if (module, name) in (("torch", "Tensor"), ("torch._tensor", "Tensor")):
            return _TENSOR
        if (module, name) in (("torch.nn.parameter", "Parameter"), ("torch.nn", "Parameter")):
            return _PARAMETER
        if module == "torch" and name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]  # a torch.dtype is a plain value
        if module in ("torch", "torch.cuda") and name.endswith("Storage"):
            return _StorageType(name, _STORAGE_DTYPES.get(name))
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _StorageType(name, torch.uint8)
        if module == "torch" or module.startswith("torch.") or (module, name) in _PLAIN_GLOBALS:
            return _Opaque  # admitted by torch's weights-only unpickler, never called here
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not a tensor, container or plain value")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:60]}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(location, str):
            raise pickle.UnpicklingError(f"malformed storage record {str(pid)[:80]}")
        if type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage '{key[:40]}' claims {str(numel)[:40]} elements")
        return StorageRef(stype.dtype, stype.name, key, location, numel)


def declared_tensors(path: Path, raw: bytes) -> list[tuple[str, TensorDecl]]:
    """(dotted name, declaration) of every tensor the pickle ``raw`` describes, built from records only."""
    try:
        obj = _Inspector(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as e:
        raise BonsaiFormatError(
            path, None, f"refusing to unpickle: the file holds more than tensors and could run code (nothing was run): {e}"
        ) from None
    except (RecursionError, MemoryError) as e:
        raise BonsaiFormatError(path, None, f"pickle is nested too deeply or too large to inspect ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 -- any other failure of a crafted opcode stream is one error
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BonsaiFormatError(path, None, f"cannot read the archive's pickle (corrupt?): {first}") from None
    out: list[tuple[str, TensorDecl]] = []
    for name, leaf in _walk(obj):
        out.append((name or "<root>", leaf))
    return out


def _walk(obj: Any) -> list[tuple[str, TensorDecl]]:
    found: list[tuple[str, TensorDecl]] = []
    stack: list[tuple[str, Any]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        name, v = stack.pop()
        if isinstance(v, TensorDecl):
            found.append((name, v))
            continue
        if not isinstance(v, (dict, list, tuple)) or id(v) in seen:
            continue
        seen.add(id(v))
        items = v.items() if isinstance(v, dict) else enumerate(v)
        stack.extend((f"{name}.{k}" if name else str(k), c) for k, c in reversed(list(items)))
    return found


def _fields(decl: TensorDecl) -> tuple[StorageRef, object, tuple, tuple, torch.dtype] | str:
    """(storage, offset, shape, stride, dtype) of a declaration, or why it is malformed."""
    a = decl.args
    if len(a) < (7 if decl.version == "v3" else 4):
        return f"tensor record has {len(a)} fields"
    storage, offset, shape, stride = a[:4]
    if not isinstance(storage, StorageRef):
        return "tensor record does not point to a stored storage"
    if not isinstance(shape, tuple) or not isinstance(stride, tuple):
        return "tensor sizes or strides are not tuples"
    if decl.version == "v3":
        dtype = a[6]
        if not isinstance(dtype, torch.dtype) or storage.type_name != "UntypedStorage":
            return f"dtype {str(dtype)[:40]} over storage type {storage.type_name} is not read"
    else:
        dtype = storage.dtype
    if dtype is None or dtype not in DTYPES:
        return f"storage type {storage.type_name} is not one a Bonsai file holds"
    return storage, offset, shape, stride, dtype


def check_declarations(path: Path, decls: list[tuple[str, TensorDecl]], entries: dict[str, int], prefix: str) -> None:
    """Every declared tensor: a readable kind, its storage record equal to its zip entry's size,
    its view dense and inside that storage, and no two tensors sharing bytes (an exact alias of
    the same view, as tied weights are saved, is one tensor)."""
    storages: dict[str, StorageRef] = {}
    spans: dict[str, list[tuple[int, int, str, tuple]]] = {}
    for name, decl in decls:
        if decl.refused:
            raise BonsaiFormatError(path, name, f"is {decl.refused}; only dense CPU tensors stored in the file are read")
        fields = _fields(decl)
        if isinstance(fields, str):
            raise BonsaiFormatError(path, name, fields)
        storage, offset, shape, stride, dtype = fields
        entry = f"{prefix}data/{storage.key}"
        if entry not in entries:
            raise BonsaiFormatError(path, name, f"its storage '{storage.key[:60]}' has no entry in the archive")
        seen = storages.setdefault(storage.key, storage)
        if seen != storage:
            raise BonsaiFormatError(path, name, f"storage '{storage.key[:60]}' is declared twice with different types or sizes")
        if storage.nbytes != entries[entry]:
            raise BonsaiFormatError(
                path, name, f"storage '{storage.key[:60]}' claims {storage.nbytes} bytes but its archive entry holds {entries[entry]}"
            )
        itemsize = DTYPES[dtype]
        problem = layout_problem(shape, stride, offset, itemsize, storage.nbytes)
        if problem:
            raise BonsaiFormatError(path, name, problem)
        n = 1
        for s in shape:
            n *= s
        start = offset * itemsize  # type: ignore[operator]
        if n:
            view = (offset, shape, stride, dtype)
            spans.setdefault(storage.key, []).append((start, start + n * itemsize, name, view))
    for key, ranges in spans.items():
        ranges.sort(key=lambda r: (r[0], r[1]))
        for (a0, a1, a, va), (b0, b1, b, vb) in zip(ranges, ranges[1:]):
            if b0 < a1 and (a0, a1, va) != (b0, b1, vb):
                raise BonsaiFormatError(path, b, f"shares bytes of storage '{key[:60]}' with '{a}'; each tensor must own its bytes")


__all__ = ["StorageRef", "TensorDecl", "check_declarations", "declared_tensors"]
