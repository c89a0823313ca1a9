"""Recognize what a path holds and open it: a single file (canonical, MLX or unpacked
safetensors, GGUF, gemlite ``state_dict.pt``), a pack folder, or a released snapshot root with
``transformer-gemlite-int*/``, ``transformer-packed-mflux/`` or ``transformer/`` inside."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..canonical import CANONICAL_MARKER, load_canonical, scale_key
from ..checkpoint import BonsaiCheckpoint
from ..errors import BonsaiFormatError
from ..packing import PackedWeight
from ..safetensors_io import SafetensorsReader, read_header
from . import gemlite, mlx, unpacked
from .layout import check_expected_variant, variant_for

log = logging.getLogger(__name__)

SNAPSHOT_SUBFOLDERS = ("transformer-gemlite-int1", "transformer-gemlite-int2", mlx.FOLDER, unpacked.FOLDER)


def _safetensors_kind(path: Path) -> str:
    """canonical, mlx or unpacked, from the header alone."""
    if path.name.endswith(".index.json"):
        return "unpacked"
    entries, meta = read_header(path)
    if meta.get("bonsai_format") == CANONICAL_MARKER:
        return "canonical"
    if any(k.endswith(".scales") for k in entries):
        return "mlx"
    return "unpacked"


def detect_format(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(format, the path its reader takes) for a file, pack folder or snapshot root."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            return "gguf", p
        if p.suffix == ".gguf":
            raise BonsaiFormatError(p, None, "named .gguf but does not start with the GGUF magic (truncated or corrupt?)")
        if p.suffix == ".safetensors" or p.name.endswith(".index.json"):
            return _safetensors_kind(p), p
        if magic[:2] == b"PK" or p.suffix in (".pt", ".pth"):
            return "gemlite", p.parent
        raise BonsaiFormatError(p, None, "unrecognized file (expected .safetensors, .gguf or a gemlite state_dict.pt)")
    if not p.is_dir():
        raise BonsaiFormatError(p, None, "no such file or folder")
    if (p / gemlite.STATE_FILE).is_file():
        return "gemlite", p
    for name in (mlx.FILE, unpacked.INDEX):
        if (p / name).is_file():
            return _safetensors_kind(p / name), p / name
    found = [p / s for s in SNAPSHOT_SUBFOLDERS if (p / s).is_dir()]
    if len(found) > 1:
        raise BonsaiFormatError(p, None, f"holds several transformer packs ({', '.join(f.name for f in found)}); pass one of them")
    if found:
        return detect_format(found[0])
    raise BonsaiFormatError(
        p,
        None,
        f"no Bonsai transformer found (expected a .safetensors/.gguf file, {gemlite.STATE_FILE}, or one of {', '.join(SNAPSHOT_SUBFOLDERS)}/)",
    )


def _read_canonical(path: Path, variant: str | None) -> BonsaiCheckpoint:
    ckpt = load_canonical(path)  # validates metadata, key set and shapes
    variant_for(path, ckpt.meta.bits, variant)
    # Serve the data with positioned reads: load_canonical's safetensors handle is a memory map,
    # whose touched pages would stay resident for the whole conversion.
    raw = SafetensorsReader(path, mmap=False)
    bits = ckpt.meta.bits

    def load_packed(key: str) -> PackedWeight:
        if key not in ckpt.packed_shapes:
            raise BonsaiFormatError(path, key, "not a quantized layer")
        codes, scales = raw.get(key), raw.get(scale_key(key))
        try:
            return PackedWeight(codes, scales, bits)
        except ValueError as e:
            raise BonsaiFormatError(path, key, str(e)) from e

    ckpt.load_packed = load_packed
    ckpt.load_dense = raw.get
    return ckpt


READERS: dict[str, Callable[[Path, str | None], BonsaiCheckpoint]] = {
    "canonical": _read_canonical,
    "gemlite": gemlite.read_gemlite,
    "mlx": mlx.read_mlx,
    "unpacked": unpacked.read_unpacked,
}


def open_checkpoint(path: str | os.PathLike[str], variant: str | None = None) -> BonsaiCheckpoint:
    """Open any Bonsai transformer lazily as a BFL-named :class:`BonsaiCheckpoint`.

    ``variant`` ("binary"/"ternary"), when given, is an expectation: a mismatch is an error."""
    check_expected_variant(path, variant)
    fmt, target = detect_format(path)
    log.debug("%s: detected %s at %s", path, fmt, target)
    if fmt == "gguf":
        from .gguf import read_gguf  # the gguf package is only needed for GGUF files

        return read_gguf(target, variant)
    return READERS[fmt](target, variant)
