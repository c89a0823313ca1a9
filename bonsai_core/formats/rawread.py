"""Read safetensors tensors with plain positioned reads instead of a memory map.

Converting streams one layer at a time, but pages of a memory-mapped source stay mapped (and
counted in the process's RSS) once touched: converting the 7.75 GB unpacked file through a map
ends with the whole file resident. Reading each tensor into its own buffer keeps the footprint
at one layer; the kernel page cache still serves repeated reads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from ..errors import BonsaiFormatError
from ..safetensors_io import _ST_TO_DTYPE, read_header


class RawSafetensors:
    """Same interface as :class:`bonsai_core.safetensors_io.SafetensorsReader`, without mmap."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BonsaiFormatError(self.path, None, "file not found")
        self.entries, self.metadata = read_header(self.path)
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
