"""Crafted (hostile or broken) files for the attack tests: raw safetensors bytes, bombs."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def raw_safetensors(path: Path, header: Any, data: bytes = b"", *, header_len: int | None = None) -> Path:
    """Write ``header`` (a JSON-able object, or raw bytes) as a safetensors header followed by
    ``data``; ``header_len`` overrides the 8-byte length field (a lie about the header size)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
    }


# name -> (header, data, header_len override, the tensor the error must name or None)
HEADER_CASES: dict[str, tuple[Any, bytes, int | None, str | None]] = {
    "length_past_eof": ({"a": entry()}, b"\0" * 8, 10_000, None),
    "length_2_63": ({"a": entry()}, b"\0" * 8, 1 << 63, None),
    "length_zero": ({"a": entry()}, b"\0" * 8, 0, None),
    "not_json": (b"{not json at all", b"", None, None),
    "invalid_utf8": (b'{"a\xff\xfe": 1}', b"", None, None),
    "array": ([1, 2, 3], b"", None, None),
    "string": ("hello", b"", None, None),
    "nan": (b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', b"\0" * 8, None, None),
    "infinity": (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, Infinity]}}', b"\0" * 8, None, None),
    "1e999": (b'{"a": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 8]}}', b"\0" * 8, None, None),
    "huge_int": (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}', b"\0" * 8, None, None),
    "deep_nesting": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, None),
    "moderate_nesting": (b'{"__metadata__": {"x": ' + b"[" * 50 + b"]" * 50 + b"}}", b"", None, None),
    "duplicate_key": (
        b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
        b"\0" * 8,
        None,
        None,
    ),
    "entry_not_object": ({"a": [1, 2]}, b"", None, "a"),
    "entry_null": ({"a": None}, b"", None, "a"),
    "dtype_unknown": ({"a": entry(dtype="F128")}, b"\0" * 8, None, "a"),
    "dtype_not_string": ({"a": entry(dtype=7)}, b"\0" * 8, None, "a"),
    "dtype_missing": ({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "a"),
    "shape_not_list": ({"a": entry(shape="2")}, b"\0" * 8, None, "a"),
    "shape_negative": ({"a": entry(shape=[-2])}, b"\0" * 8, None, "a"),
    "shape_bool": ({"a": entry(shape=[True, True])}, b"\0" * 8, None, "a"),
    "shape_float": ({"a": entry(shape=[2.0])}, b"\0" * 8, None, "a"),
    "shape_null": ({"a": entry(shape=None)}, b"\0" * 8, None, "a"),
    "shape_huge": ({"a": entry(shape=[1 << 40, 1 << 40])}, b"\0" * 8, None, "a"),
    "shape_too_many_dims": ({"a": entry(shape=[1] * 64)}, b"\0" * 8, None, "a"),
    "offsets_one": ({"a": entry(offsets=[8])}, b"\0" * 8, None, "a"),
    "offsets_strings": ({"a": entry(offsets=["0", "8"])}, b"\0" * 8, None, "a"),
    "offsets_reversed": ({"a": entry(offsets=[8, 0])}, b"\0" * 8, None, "a"),
    "offsets_negative": ({"a": entry(offsets=[-8, 0])}, b"\0" * 8, None, "a"),
    "offsets_past_eof": ({"a": entry(offsets=[0, 8])}, b"\0" * 4, None, "a"),
    "bytes_mismatch": ({"a": entry(shape=[3])}, b"\0" * 8, None, "a"),
    "overlap": ({"a": entry(), "b": entry(offsets=[4, 12])}, b"\0" * 12, None, "b"),
    "metadata_not_object": ({"__metadata__": [1], "a": entry()}, b"\0" * 8, None, "__metadata__"),
    "metadata_int_value": ({"__metadata__": {"k": 1}, "a": entry()}, b"\0" * 8, None, "__metadata__"),
    "empty_name": ({"": entry()}, b"\0" * 8, None, None),
    "newline_in_name": ({"a\nb\rc\x1b[2J": entry(shape=[3])}, b"\0" * 8, None, "a\nb\rc\x1b[2J"),
    "too_many_tensors": ({f"t{i}": entry(shape=[0], offsets=[0, 0]) for i in range(20_000)}, b"", None, None),
}


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rewrite_header(path: Path, edit: Any) -> Path:
    """Apply ``edit(header_dict)`` to a safetensors file's header, keeping its data bytes."""
    header, data = _split(path)
    edit(header)
    return raw_safetensors(path, header, data)


def append_tensor(path: Path, name: str, dtype: str, shape: list[int], payload: bytes) -> Path:
    """Add one tensor (its bytes appended after the existing data) to a safetensors file."""
    header, data = _split(path)
    header[name] = entry(dtype, shape, [len(data), len(data) + len(payload)])
    return raw_safetensors(path, header, data + payload)


def poke(path: Path, tensor: str, offset: int, payload: bytes) -> Path:
    """Overwrite bytes of ``tensor``'s data (``offset`` within the tensor) in place."""
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start = 8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0] + offset
    raw[start : start + len(payload)] = payload
    path.write_bytes(bytes(raw))
    return path
