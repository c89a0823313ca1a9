"""Bounded reading of untrusted files: only regular files, size caps, strict JSON.

Everything a Bonsai file declares (a header length, a JSON document, a nesting depth, a number)
is checked against a cap *before* anything proportional to it is allocated, so a 1 KB file can
never make the reader allocate gigabytes or hang. The caps are far above what any Bonsai Image
4B release (or its Qwen3-4B text encoder) needs and far below what would hurt a desktop; each
is documented in docs/SECURITY.md.

Every failure is one :class:`BonsaiFormatError` naming the file (and the key when there is one).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from .errors import BonsaiFormatError

# A config.json / quantization_config.json / shard index of a release is a few KB (the longest,
# quantization_config.json with 100 module names, ~8 KB; a text-encoder shard index ~40 KB).
MAX_JSON_BYTES = 4 << 20
# Releases nest JSON 3 deep at most (config -> quantization -> list).
MAX_JSON_DEPTH = 32
# Integers in configs and headers are sizes and offsets: 2**53 covers any file a disk holds and
# keeps every value exact as a float too.
MAX_JSON_INT = 1 << 53
MAX_JSON_INT_DIGITS = 20


def open_regular(path: str | os.PathLike[str], what: str | None = None) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (symlinks to one are fine).

    A FIFO, socket or device (``/dev/zero``) is refused without reading from it: the open itself
    is non-blocking, so a FIFO with no writer cannot hang the caller."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError as e:
        raise BonsaiFormatError(p, what, "file not found") from e
    except OSError as e:
        raise BonsaiFormatError(p, what, f"cannot open: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (FIFO, device or socket)"
            raise BonsaiFormatError(p, what, f"is {kind}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def same_file_path(f: BinaryIO) -> str | None:
    """A path that opens the very file ``f`` has open, not whatever its name points to now
    (``/proc/self/fd/N`` on Linux, ``/dev/fd/N`` on macOS); None where there is none (Windows).

    For libraries that take only a path (``torch.load(mmap=True)``, the ``gguf`` reader): handing
    them this path keeps a check and the read that follows on one file."""
    for base in ("/proc/self/fd", "/dev/fd"):
        candidate = f"{base}/{f.fileno()}"
        try:
            if os.path.samestat(os.stat(candidate), os.fstat(f.fileno())):
                return candidate
        except OSError:
            continue
    return None


def read_bounded(path: str | os.PathLike[str], limit: int, what: str | None = None) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise BonsaiFormatError(path, what, f"is {size} bytes; at most {limit} are accepted for this kind of file")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while reading
        raise BonsaiFormatError(path, what, f"holds more than {limit} bytes")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (NaN/Infinity are refused)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is out of range")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer {text[:24]}... has more than {MAX_JSON_INT_DIGITS} digits")
    v = int(text)
    if abs(v) > MAX_JSON_INT:
        raise ValueError(f"integer {v} exceeds {MAX_JSON_INT}")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:80]!r} appears twice")
        out[k] = v
    return out


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((c, d + 1) for c in v.values())
        elif isinstance(v, list):
            stack.extend((c, d + 1) for c in v)
    return deepest


def loads_strict(raw: bytes | str, path: str | os.PathLike[str], what: str | None = None, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON refusing NaN/Infinity, out-of-range numbers (``1e999``), huge integers,
    duplicate keys, invalid UTF-8 and nesting deeper than ``max_depth``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_no_duplicates,
        )
    except RecursionError as e:
        raise BonsaiFormatError(path, what, "JSON is nested too deeply") from e
    except UnicodeDecodeError as e:
        raise BonsaiFormatError(path, what, f"not UTF-8 text: {e.reason} at byte {e.start}") from e
    except ValueError as e:  # json.JSONDecodeError is a ValueError, and so are our hooks' refusals
        raise BonsaiFormatError(path, what, f"cannot parse JSON: {e}") from e
    if _depth(value, max_depth) > max_depth:
        raise BonsaiFormatError(path, what, f"JSON is nested more than {max_depth} levels deep")
    return value


def read_json_object(path: str | os.PathLike[str], *, required: bool = True, limit: int = MAX_JSON_BYTES) -> dict[str, Any] | None:
    """A JSON object from a regular file of at most ``limit`` bytes; None if absent and not required."""
    p = Path(path)
    if not required and not os.path.lexists(p):
        return None
    if required and not os.path.lexists(p):
        raise BonsaiFormatError(p, None, "required JSON file is missing")
    value = loads_strict(read_bounded(p, limit), p)
    if not isinstance(value, dict):
        raise BonsaiFormatError(p, None, f"expected a JSON object, found {type(value).__name__}")
    return value


def plain_file_name(index: Path, name: object, key: str | None = None) -> str:
    """A shard name from an index: a plain file name in the index's folder (no folders, no '..')."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or ":" in name:
        raise BonsaiFormatError(index, key, f"shard name {str(name)[:80]!r} is not a plain file name next to the index")
    return name


def read_shard_index(index: Path, max_shards: int) -> dict[str, str]:
    """A safetensors shard index (``*.index.json``): tensor name -> shard file name, read bounded and
    strict, every value a plain file name next to the index, at most ``max_shards`` distinct shards."""
    idx = read_json_object(index)
    assert idx is not None
    weight_map = idx.get("weight_map")
    if not isinstance(weight_map, dict):
        raise BonsaiFormatError(index, "weight_map", "the shard index has no 'weight_map' object")
    # every value a plain file name first (a list or a path is one error, never a TypeError)
    placed = {key: plain_file_name(index, name, key) for key, name in weight_map.items()}
    if len(set(placed.values())) > max_shards:
        raise BonsaiFormatError(index, "weight_map", f"lists more than {max_shards} shard files")
    return placed

