"""Recognize what a path holds and open it: a single file (canonical, MLX or unpacked
safetensors, GGUF, gemlite ``state_dict.pt``), a pack folder, a released snapshot root with
``transformer-gemlite-int*/``, ``transformer-packed-mflux/`` or ``transformer/`` inside, or a
folder holding one ``.gguf`` (a community GGUF repository).

A safetensors file is opened and its header parsed once: the reader that classified it is
handed to the format's reader, which reads the data through it."""

from __future__ import annotations

import os
from pathlib import Path

from ..bounded import open_regular
from ..checkpoint import CANONICAL_MARKER, BonsaiCheckpoint
from ..errors import BonsaiFormatError
from ..escape import escaping_logger
from ..safetensors_io import SafetensorsReader
from . import gemlite, mlx, unpacked
from .layout import check_expected_variant
from .registry import FORMATS

log = escaping_logger(__name__)

SNAPSHOT_SUBFOLDERS = ("transformer-gemlite-int1", "transformer-gemlite-int2", mlx.FOLDER, unpacked.FOLDER)


def _safetensors_kind(reader: SafetensorsReader) -> str:
    """canonical, gemlite, mlx or unpacked, from the header alone."""
    if reader.metadata.get("bonsai_format") == CANONICAL_MARKER:
        return "canonical"
    if any(k.endswith(".W_q") for k in reader.entries):
        return "gemlite"  # gemlite leaves saved as safetensors (they have '.scales' too: test first)
    if any(k.endswith(".scales") for k in reader.entries):
        return "mlx"
    return "unpacked"


def _detect(path: str | os.PathLike[str]) -> tuple[str, Path, SafetensorsReader | None]:
    """(format, the path its reader takes, the reader already open on a safetensors file)."""
    p = Path(path)
    if p.is_file():
        if p.name.endswith(".index.json"):
            return "unpacked", p, None
        if p.suffix == ".safetensors":  # the reader's one open and header parse also classify it
            reader = SafetensorsReader(p, mmap=False)
            return _safetensors_kind(reader), p, reader
        with open_regular(p) as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            return "gguf", p, None
        if p.suffix == ".gguf":
            raise BonsaiFormatError(p, None, "named .gguf but does not start with the GGUF magic (truncated or corrupt?)")
        if magic[:2] == b"PK" or p.suffix in (".pt", ".pth"):
            return "gemlite", p, None  # the file itself: a loose copy may have any name
        raise BonsaiFormatError(p, None, "unrecognized file (expected .safetensors, .gguf or a gemlite state_dict.pt)")
    if not p.is_dir():
        if os.path.lexists(p):
            open_regular(p).close()  # raises the precise reason: FIFO, device, dangling link
        raise BonsaiFormatError(p, None, "no such file or folder")
    if (p / gemlite.STATE_FILE).is_file():
        return "gemlite", p, None
    for name in (mlx.FILE, unpacked.INDEX):
        if (p / name).is_file():
            return _detect(p / name)
    found = [p / s for s in SNAPSHOT_SUBFOLDERS if (p / s).is_dir()]
    if len(found) > 1:
        raise BonsaiFormatError(p, None, f"holds several transformer packs ({', '.join(f.name for f in found)}); pass one of them")
    if found:
        return _detect(found[0])
    ggufs = sorted(c for c in p.glob("*.gguf") if c.is_file())  # a community GGUF's repository folder
    if len(ggufs) > 1:
        raise BonsaiFormatError(p, None, f"holds several .gguf files ({', '.join(g.name for g in ggufs[:4])}); pass one of them")
    if ggufs:
        return _detect(ggufs[0])
    raise BonsaiFormatError(
        p,
        None,
        f"no Bonsai transformer found (expected a .safetensors/.gguf file, {gemlite.STATE_FILE}, or one of {', '.join(SNAPSHOT_SUBFOLDERS)}/)",
    )


def detect_format(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(format, the path its reader takes) for a file, pack folder or snapshot root."""
    fmt, target, reader = _detect(path)
    if reader is not None:
        reader.close()
    return fmt, target


def open_checkpoint(path: str | os.PathLike[str], variant: str | None = None) -> BonsaiCheckpoint:
    """Open any Bonsai transformer lazily as a BFL-named :class:`BonsaiCheckpoint`.

    ``variant`` ("binary"/"ternary"), when given, is an expectation: a mismatch is an error."""
    check_expected_variant(path, variant)
    fmt, target, reader = _detect(path)
    log.debug("%s: detected %s at %s", path, fmt, target)
    opened = {"reader": reader} if reader is not None else {}
    return FORMATS[fmt].read(target, variant, **opened)
