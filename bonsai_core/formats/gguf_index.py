"""The tensor table of a GGUF file, with raw ggml type ids and the bytes each tensor occupies.

The ``gguf`` package's reader turns every type id into its ``GGMLQuantizationType`` enum and looks
up its block size while opening the file, so a file holding a type the package does not list
(PrismML's ``PQ2_0`` = 142, ``PTQ1_0`` = 143; ``Q2_0`` = 42 in gguf 0.19) fails to open at all,
with an error that reads like corruption. :class:`TensorIndex` keeps the package's own parser for
the header, the key/values and the tensor infos and replaces only that last step: it records each
tensor's name, raw type id, dimensions and data offset, and maps no tensor data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gguf


@dataclass
class TensorInfo:
    """One tensor-info entry; ``dims`` in ggml order (``dims[0]`` is the row length K)."""

    name: str
    type_id: int
    dims: tuple[int, ...]
    data_offset: int  # absolute, in the file
    span: int = 0  # bytes up to the next tensor's data (or the end of the file): set by TensorIndex
    n_bytes: int = 0  # bytes its type needs: set by the caller once the layout is known

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical (row-major) shape: ``[N, K]`` for a linear weight."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        try:
            return f"{gguf.GGMLQuantizationType(self.type_id).name} (type {self.type_id})"
        except ValueError:
            return f"ggml type {self.type_id}"


class TensorIndex(gguf.GGUFReader):
    """``gguf.GGUFReader`` that keeps tensor infos with raw type ids (``tensor_infos``) and leaves
    ``tensors`` empty. Header errors are the package's (ValueError and friends)."""

    tensor_infos: list[TensorInfo]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "r")
        end = int(self.data.shape[0])
        ordered = sorted(self.tensor_infos, key=lambda t: t.data_offset)
        for t, nxt in zip(ordered, ordered[1:] + [None]):
            t.span = (nxt.data_offset if nxt is not None else end) - t.data_offset

    def _build_tensors(self, start_offs: int, fields: list[gguf.ReaderField]) -> None:
        infos: list[TensorInfo] = []
        names: set[str] = set()
        for field in fields:
            _name_len, name_data, _n_dims, dims, raw_dtype, offset_tensor = field.parts
            name = str(bytes(name_data), encoding="utf-8")
            if name in names:
                raise ValueError(f"tensor {name!r} is listed twice")
            names.add(name)
            infos.append(TensorInfo(name, int(raw_dtype[0]), tuple(int(x) for x in dims), int(start_offs + int(offset_tensor[0]))))
        self.tensor_infos = infos
        self.tensors = []
