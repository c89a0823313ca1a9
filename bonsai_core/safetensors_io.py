"""Streaming safetensors I/O: write one tensor at a time (memory bounded by the largest tensor)
and read with clear errors for truncated or corrupt files."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .atomic import atomic_path
from .errors import BonsaiFormatError

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


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """(tensor entries, metadata) of a safetensors file, validated against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BonsaiFormatError(path, None, "file is too short to be safetensors (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise BonsaiFormatError(path, None, f"safetensors header length {n} exceeds the file size {size} (truncated or not safetensors)")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BonsaiFormatError(path, None, f"corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise BonsaiFormatError(path, None, "corrupt safetensors header: not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, entry in header.items():
        try:
            start, end = entry["data_offsets"]
            dtype = entry["dtype"]
            shape = entry["shape"]
        except (KeyError, TypeError, ValueError) as e:
            raise BonsaiFormatError(path, name, f"corrupt header entry {entry!r}") from e
        if end > data_len:
            raise BonsaiFormatError(path, name, f"data ends at byte {end} but the file holds only {data_len} data bytes (truncated download?)")
        if dtype in _ST_TO_DTYPE and _nbytes(_ST_TO_DTYPE[dtype], tuple(shape)) != end - start:
            raise BonsaiFormatError(path, name, f"{dtype} {shape} needs {_nbytes(_ST_TO_DTYPE[dtype], tuple(shape))} bytes, header gives {end - start}")
    return header, meta


class SafetensorsReader:
    """Lazy, validated access to one safetensors file (tensors are read on demand).

    ``mmap=True`` reads through safetensors' memory map (cheap random access). ``mmap=False`` reads
    each tensor with a positioned read into its own buffer: converting streams one layer at a time,
    but pages of a memory map stay mapped (and counted in RSS) once touched, so converting the
    7.75 GB unpacked file through a map ends with the whole file resident.
    """

    def __init__(self, path: str | os.PathLike[str], *, mmap: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BonsaiFormatError(self.path, None, "file not found")
        self.entries, self.metadata = read_header(self.path)
        self._handle = safe_open(str(self.path), framework="pt") if mmap else None
        with open(self.path, "rb") as f:
            self._data_start = 8 + int.from_bytes(f.read(8), "little")
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype_name(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise BonsaiFormatError(self.path, name, "tensor is missing")
        if self._handle is None:
            return self._read(name)
        try:
            return self._handle.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise BonsaiFormatError(self.path, name, f"cannot read tensor: {e}") from e

    def _read(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        dtype = _ST_TO_DTYPE.get(e["dtype"])
        if dtype is None:
            raise BonsaiFormatError(self.path, name, f"unsupported dtype {e['dtype']}")
        start, end = e["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        with self._lock, open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            got = f.readinto(buf.numpy()) if end > start else 0
        if got != end - start:
            raise BonsaiFormatError(self.path, name, f"read {got} of {end - start} bytes (file truncated while reading?)")
        return buf.view(dtype).reshape(e["shape"])
