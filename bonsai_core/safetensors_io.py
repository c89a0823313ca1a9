"""Streaming safetensors I/O: write one tensor at a time (memory bounded by the largest tensor)
and read through one bounded, fully validated header parse per file.

The reader never trusts the header: its length, every entry's dtype, shape and byte range, the
metadata and the tensor count are checked against caps and against the file size before any
tensor is touched, so a crafted header ends as one :class:`BonsaiFormatError` naming the file
and the tensor, never as a traceback or an allocation the file cannot back.
"""

from __future__ import annotations

import json
import mmap as _mmap
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .atomic import atomic_path
from .bounded import loads_strict, open_regular
from .errors import BonsaiFormatError
from .tensor_bounds import check_tensor

_DTYPE_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint32: "U32",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}
# Bytes per element of every dtype name the safetensors format defines (some have no torch dtype
# here; such tensors can be listed but not read).
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1}
_ST_ITEMSIZE.update({"BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1})

# Caps (docs/SECURITY.md). A canonical Klein 4B header is ~25 KB with 229 tensors; the Qwen3-4B
# MLX text encoder ~150 KB with ~1,300. Parsing a header of the cap costs ~10x its size in RAM.
MAX_HEADER_BYTES = 4 << 20
MAX_TENSORS = 16384
MAX_NDIM = 8
MAX_NAME_CHARS = 512
MAX_METADATA_CHARS = 1 << 20  # all metadata keys and values together


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: name, dtype, shape and a function that produces it when its turn comes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


def write_safetensors(path: str | os.PathLike[str], specs: Iterable[TensorSpec], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file tensor by tensor, atomically. Returns the file size in bytes.

    The header is computed from the specs up front, so only one tensor is in memory at a time.
    Each produced tensor is checked against its spec.
    """
    specs = list(specs)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in specs:
        if s.dtype not in _DTYPE_TO_ST:
            raise ValueError(f"{s.name}: dtype {s.dtype} cannot be stored in safetensors")
        n = _nbytes(s.dtype, s.shape)
        header[s.name] = {"dtype": _DTYPE_TO_ST[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for s in specs:
                t = s.produce()
                if t.dtype != s.dtype or tuple(t.shape) != tuple(s.shape):
                    raise ValueError(f"{path}: tensor '{s.name}' produced {t.dtype} {list(t.shape)}, expected {s.dtype} {list(s.shape)}")
                t = t.detach().to("cpu").contiguous()
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
    return size


def _int_list(v: object, n: int | None = None) -> list[int] | None:
    """``v`` as a list of non-negative ints (JSON booleans are not numbers), or None."""
    if not isinstance(v, list) or (n is not None and len(v) != n):
        return None
    if not all(type(x) is int and x >= 0 for x in v):
        return None
    return v


def _check_entry(path: Path, name: str, entry: object, data_len: int) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise BonsaiFormatError(path, name, f"header entry is {type(entry).__name__}, expected an object with dtype, shape, data_offsets")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
        raise BonsaiFormatError(path, name, f"unknown dtype {str(dtype)[:40]!r}")
    shape = _int_list(entry.get("shape"))
    if shape is None or len(shape) > MAX_NDIM:
        raise BonsaiFormatError(
            path, name, f"shape {str(entry.get('shape'))[:80]} is not a list of at most {MAX_NDIM} non-negative integers"
        )
    offsets = _int_list(entry.get("data_offsets"), 2)
    if offsets is None:
        raise BonsaiFormatError(path, name, f"data_offsets {str(entry.get('data_offsets'))[:80]} is not [start, end]")
    start, end = offsets
    if start > end:
        raise BonsaiFormatError(path, name, f"data_offsets [{start}, {end}] end before they start")
    if end > data_len:
        raise BonsaiFormatError(path, name, f"data ends at byte {end} but the file holds only {data_len} data bytes (truncated download?)")
    need = 0 if 0 in shape else _ST_ITEMSIZE[dtype]
    for d in shape:  # Python ints: no overflow, and the product is bounded by data_len below
        need *= d
        if need > data_len:
            break
    if need != end - start:
        raise BonsaiFormatError(
            path,
            name,
            f"{dtype} {shape} needs {need if need <= data_len else 'more than ' + str(data_len)} bytes, header gives {end - start}",
        )
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def _check_metadata(path: Path, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise BonsaiFormatError(path, "__metadata__", "metadata must map strings to strings")
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_METADATA_CHARS:
        raise BonsaiFormatError(path, "__metadata__", f"metadata holds more than {MAX_METADATA_CHARS} characters")
    return meta


def parse_header(path: Path, f: BinaryIO) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """(entries, metadata, data start) of an open safetensors file, every field validated.

    Entries are ``name -> {"dtype", "shape", "data_offsets"}`` in file order; offsets are relative
    to the data start. Byte ranges may not overlap (one byte is never two tensors)."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise BonsaiFormatError(path, None, "file is too short to be safetensors (truncated?)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise BonsaiFormatError(path, None, f"safetensors header length {n} exceeds the file size {size} (truncated or not safetensors)")
    if n > MAX_HEADER_BYTES:
        raise BonsaiFormatError(path, None, f"safetensors header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte cap")
    raw = f.read(n)
    if len(raw) != n:
        raise BonsaiFormatError(path, None, f"read {len(raw)} of {n} header bytes (file truncated while reading?)")
    header = loads_strict(raw, path, None, max_depth=4)
    if not isinstance(header, dict):
        raise BonsaiFormatError(path, None, "corrupt safetensors header: not a JSON object")
    meta = _check_metadata(path, header.pop("__metadata__", None))
    if len(header) > MAX_TENSORS:
        raise BonsaiFormatError(path, None, f"header lists {len(header)} tensors; at most {MAX_TENSORS} are accepted")
    data_len = size - 8 - n
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        if not name or len(name) > MAX_NAME_CHARS:
            raise BonsaiFormatError(path, name[:MAX_NAME_CHARS] or None, f"tensor name is empty or longer than {MAX_NAME_CHARS} characters")
        entries[name] = _check_entry(path, name, entry, data_len)
    spans = sorted(
        (e["data_offsets"][0], e["data_offsets"][1], k) for k, e in entries.items() if e["data_offsets"][1] > e["data_offsets"][0]
    )
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise BonsaiFormatError(path, b, f"its bytes overlap those of '{a}'")
    return entries, meta, 8 + n


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(tensor entries, metadata) of a safetensors file, validated against the file size."""
    path = Path(path)
    with open_regular(path) as f:
        entries, meta, _ = parse_header(path, f)
    return entries, meta


class SafetensorsReader:
    """Validated access to one safetensors file: opened once, header parsed once, tensors read
    on demand.

    ``mmap=True`` hands out tensors that view a private (copy-on-write) map of the file: cheap
    random access, nothing read until touched. ``mmap=False`` reads each tensor with a positioned
    read into its own buffer: converting streams one layer at a time, but pages of a map stay
    mapped (and counted in RSS) once touched, so converting the 7.75 GB unpacked file through a
    map would end with the whole file resident.
    """

    def __init__(self, path: str | os.PathLike[str], *, mmap: bool = True) -> None:
        self.path = Path(path)
        f = open_regular(self.path)
        try:
            self.entries, self.metadata, self._data_start = parse_header(self.path, f)
        except BaseException:
            f.close()
            raise
        self._file = f
        self.size = os.fstat(f.fileno()).st_size  # bytes on disk when opened
        self._closer = weakref.finalize(self, f.close)
        self._use_mmap = mmap
        self._map: _mmap.mmap | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file (tensors already handed out from the map stay valid)."""
        self._closer()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype_name(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> torch.Tensor:
        e = self.entries.get(name)
        if e is None:
            raise BonsaiFormatError(self.path, name, "tensor is missing")
        dtype = _ST_TO_DTYPE.get(e["dtype"])
        if dtype is None:
            raise BonsaiFormatError(self.path, name, f"dtype {e['dtype']} cannot be read into torch here")
        start, end = e["data_offsets"]
        if end == start:
            return torch.empty(e["shape"], dtype=dtype)
        offset = self._data_start + start
        try:
            if self._use_mmap:
                flat = torch.frombuffer(self._mapped(), dtype=torch.uint8, count=end - start, offset=offset)
            else:
                flat = self._pread(name, offset, end - start)
        except BonsaiFormatError:
            raise
        except (OSError, ValueError) as err:  # closed, or shrunk since the header was read
            raise BonsaiFormatError(self.path, name, f"cannot read tensor data: {err}") from err
        return check_tensor(self.path, name, flat.view(dtype).reshape(e["shape"]))

    def _mapped(self) -> _mmap.mmap:
        with self._lock:
            if self._map is None:
                if os.fstat(self._file.fileno()).st_size < self._data_start + max(
                    (e["data_offsets"][1] for e in self.entries.values()), default=0
                ):
                    raise ValueError("the file shrank after its header was read")
                self._map = _mmap.mmap(self._file.fileno(), 0, access=_mmap.ACCESS_COPY)
            return self._map

    def _pread(self, name: str, offset: int, n: int) -> torch.Tensor:
        buf = torch.empty(n, dtype=torch.uint8)
        with self._lock:
            self._file.seek(offset)
            got = self._file.readinto(buf.numpy())
        if got != n:
            raise BonsaiFormatError(self.path, name, f"read {got} of {n} bytes (file truncated while reading?)")
        return buf
