"""Bounded, code-free loading of ``torch.save`` archives (gemlite ``state_dict.pt``, HQQ ``qmodel.pt``).

A ``torch.save`` file is a zip archive: a pickle (``<name>/data.pkl``) that says which tensors
exist, and one stored (uncompressed) entry per tensor storage. Before :func:`torch.load` sees
the file, its zip directory is checked so that what torch then maps or reads can only be bytes
the file really holds:

* every entry is *stored*, not compressed: ``torch.load(mmap=True)`` maps entry bytes as tensor
  data, so a compressed entry (a pack re-zipped by a tool) would become garbage or NaN weights,
  and without ``mmap`` a small compressed entry can inflate to gigabytes (a zip bomb);
* no entry is encrypted, entries do not overlap, each lies inside the file, names are unique;
* the pickle is at most :data:`MAX_PICKLE_BYTES` and the entry count at most
  :data:`MAX_ENTRIES`, which bounds what unpickling can build.

Before ``torch.load`` runs, the pickle itself is read by :mod:`bonsai_core.torch_pickle` (which
builds nothing of torch): every tensor it declares must be dense, inside a storage whose claimed
size equals its zip entry, and own its bytes (:mod:`bonsai_core.tensor_bounds`), so a 27 KB file
cannot describe a 15 GB layer. The pickle is then read with ``weights_only=True``: only tensors,
containers and plain values are rebuilt, and anything that would call code is refused before it
runs; every loaded tensor is checked once more by the same rule.

The file is opened once: the zip check, the pickle inspection and ``torch.load`` (which needs a
path to memory-map) all read the same open file, through ``/proc/self/fd`` (``/dev/fd`` on macOS),
so replacing the path while a load runs cannot mix two files or hang on a FIFO.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from .bounded import open_regular, same_file_path
from .errors import BonsaiFormatError
from .tensor_bounds import check_tensors
from .torch_pickle import check_declarations, declared_tensors

# The gemlite pack's pickle is ~60 KB (700 entries); HQQ's qmodel.pt ~300 KB (~3,000 entries).
MAX_PICKLE_BYTES = 16 << 20
MAX_ENTRIES = 65536
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. extra field length (30 bytes)


def check_archive(path: str | os.PathLike[str]) -> None:
    """Refuse a ``torch.save`` zip whose entries are compressed, encrypted, overlapping, outside
    the file, duplicated, too many, whose pickle is too large, or whose tensors claim more than
    their storages hold (see the module docstring)."""
    p = Path(path)
    with open_regular(p) as f:
        _check_open_archive(p, f)


def _check_open_archive(p: Path, f: Any) -> None:
    """The zip checks and the pickle's tensor declarations, on an open file."""
    size = os.fstat(f.fileno()).st_size
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise BonsaiFormatError(p, None, f"archive holds {len(infos)} entries; at most {MAX_ENTRIES} are accepted")
            spans: list[tuple[int, int, str]] = []
            sizes: dict[str, int] = {}
            for info in infos:
                spans.append(_entry_span(p, f, info, size))
                if info.filename in sizes:
                    raise BonsaiFormatError(p, info.filename, "archive entry appears twice")
                sizes[info.filename] = info.file_size
    except BonsaiFormatError:
        raise
    except zipfile.BadZipFile as e:
        raise BonsaiFormatError(
            p,
            None,
            f"not a torch.save zip archive ({e}): truncated or corrupt download, or a raw pickle (only torch.save archives are read)",
        ) from e
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise BonsaiFormatError(p, None, f"corrupt zip archive: {e}") from e
    pickles = [s for s in spans if s[2].endswith("data.pkl")]
    if len(pickles) != 1:
        raise BonsaiFormatError(p, None, f"expected one data.pkl in the archive, found {len(pickles)}")
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise BonsaiFormatError(p, b, f"archive entry overlaps '{a}' (a crafted zip)")
    _, end, name = pickles[0]
    prefix = name[: -len("data.pkl")]
    f.seek(end - sizes[name])
    raw = f.read(sizes[name])
    if len(raw) != sizes[name]:
        raise BonsaiFormatError(p, name, "pickle entry is truncated")
    check_declarations(p, declared_tensors(p, raw), sizes, prefix)


def _entry_span(p: Path, f: Any, info: zipfile.ZipInfo, size: int) -> tuple[int, int, str]:
    """(first byte of the local header, end of the data, name) of one entry, checked."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise BonsaiFormatError(p, name, "archive entry is encrypted")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise BonsaiFormatError(
            p,
            name,
            f"archive entry is compressed (method {info.compress_type}); torch.save writes stored entries, "
            "and a re-compressed pack would load as garbage weights - re-download or re-export it",
        )
    if name.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
        raise BonsaiFormatError(p, name, f"pickle of {info.file_size} bytes exceeds the {MAX_PICKLE_BYTES}-byte cap")
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise BonsaiFormatError(p, name, "local zip header lies past the end of the file (truncated?)")
    sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    if sig != b"PK\x03\x04":
        raise BonsaiFormatError(p, name, "local zip header is corrupt")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    end = start + info.file_size
    if end > size:
        raise BonsaiFormatError(p, name, f"entry data ends at byte {end}, past the end of the {size}-byte file (truncated download?)")
    return info.header_offset, end, name


def load_archive(path: str | os.PathLike[str], *, mmap: bool = True) -> Any:
    """Open the file once, check its zip and its tensors' declarations (module docstring), then
    ``torch.load(weights_only=True)`` on CPU from the same open file; tensors view a map of the
    file when ``mmap`` (nothing is read until a layer is touched). Every loaded tensor is checked by
    :func:`bonsai_core.tensor_bounds.check_tensor`."""
    p = Path(path)
    with open_regular(p) as f:
        _check_open_archive(p, f)
        same = same_file_path(f)
        try:
            if mmap and same is not None:
                obj = torch.load(same, map_location="cpu", weights_only=True, mmap=True)
            elif mmap:  # no descriptor path (Windows): the name is reopened, checked to be the same file after
                obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                if not os.path.samestat(os.stat(p), os.fstat(f.fileno())):
                    raise BonsaiFormatError(p, None, "the file was replaced while it was being loaded")
            else:
                f.seek(0)
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BonsaiFormatError(
                p, None, f"refusing to unpickle: the file holds more than tensors and could run code (loaded with weights_only=True): {first}"
            ) from e
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            if isinstance(e, BonsaiFormatError):
                raise
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BonsaiFormatError(p, None, f"cannot read as a torch.save archive (truncated or corrupt?): {first}") from e
    return check_tensors(p, obj)
