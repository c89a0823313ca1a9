"""The one folder service of the pack's loader nodes: where models live, how names become paths.

Every Bonsai loader (model, text encoder, VAE, pipeline) goes through this module for four things:

* **registration** of ``models/bonsai`` with ComfyUI's ``folder_paths`` (roots added under the key
  ``bonsai`` in ``extra_model_paths.yaml`` are kept and searched too);
* a **bounded walker** (:func:`walk`): depth and entry caps, hidden entries skipped, and a folder
  reached twice through symlinks (a loop, or two links to one place) is entered once;
* a **check cache** (:func:`check`) keyed by fingerprint (path, size, mtime_ns of the entry and of the
  files just below it): a dropdown or a queued prompt re-reads a header only after the bytes changed.
  A check never raises: whatever goes wrong in it (a corrupt header, an unreadable file, a bug) is the
  entry's problem, so one bad file cannot make the pack fail at import, ``/object_info`` fail, or other
  prompts fail;
* **the path guard** (:func:`locate`): names are relative to a models folder. Absolute paths, drives,
  UNC paths, ``..`` parts and NUL are refused wherever a name becomes a path -- at validation (literal
  widget values) and again at execution, which is the only place a name arriving through a link is
  seen. Symlinks *inside* a models folder are followed: placing them there is the user's own choice.

Refusals and missing models are raised as builtin exceptions (``ValueError``, ``FileNotFoundError``)
with a one-line message: ComfyUI shows the exception's type name next to it, and a builtin type reads
as itself instead of this pack's dotted module path.
"""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import folder_paths

from ..bonsai_core.download.models_dir import BONSAI_FOLDER
from ..bonsai_core.escape import escaping_logger
from . import listings

log = escaping_logger("bonsai_image.folders")

BONSAI = BONSAI_FOLDER  # models/bonsai: downloaded releases and canonical files (the downloader writes there)
PACK_DIR = Path(__file__).resolve().parents[1].name  # this pack's folder under custom_nodes/
DOWNLOAD_NODE = "Bonsai Download Model"

MAX_DEPTH = 4  # models/bonsai/<group>/<repo>/<part>/ is the deepest layout a loader lists
MAX_ENTRIES = 20_000  # directory entries looked at per root and listing; a larger tree is cut short (logged)
MAX_NAME = 1024  # characters; longer names are refused before any filesystem call
_FINGERPRINT_DEPTH = 2  # a snapshot's transformer-*/state_dict.pt is two levels below the snapshot
_FINGERPRINT_ENTRIES = 512
_CACHE_SIZE = 4 * MAX_ENTRIES  # every entry of a full listing stays cached (a smaller LRU re-checked them all each time)

Check = Callable[[Path], str | None]


# ----------------------------------------------------------------------------- registration and roots


def register() -> None:
    """Add ``models/bonsai`` to ComfyUI's model folders (idempotent; yaml-added roots are kept)."""
    folder_paths.add_model_folder_path(BONSAI, os.path.join(folder_paths.models_dir, BONSAI))


def roots(kind: str) -> list[Path]:
    """The folders ComfyUI searches for ``kind`` (``bonsai``, ``diffusion_models``, ...), in its order."""
    if kind == BONSAI:
        register()
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    except KeyError:  # a kind this ComfyUI does not know
        return []


def models_hint(kind: str = BONSAI) -> str:
    """How to get the released files (the Download node or the pack's CLI), for "not found" messages."""
    return (
        f'get the release with the "{DOWNLOAD_NODE}" node, or run '
        f"`python custom_nodes/{PACK_DIR}/bonsai.py download ternary` (or `binary`) with ComfyUI's Python; "
        f"files go to models/{kind}/"
    )


# ----------------------------------------------------------------------------- the path guard


def name_problem(name: object, what: str, where: str) -> str | None:
    """Why ``name`` cannot be a ``what`` name relative to ``where``, or None for a plain relative name."""
    if not isinstance(name, str) or not name.strip():
        return f"{name!r}: not a {what} name under {where} (expected the name of an entry in the list)"
    if len(name) > MAX_NAME or "\x00" in name:
        return f"{name[:80]!r}: not a {what} name under {where} (too long or contains NUL)"
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.drive or windows.root or ".." in posix.parts or ".." in windows.parts:
        return f"{name!r}: not a {what} name under {where} (absolute paths and '..' are refused)"
    return None


def guard(name: object, what: str, where: str) -> str:
    """``name`` when it is a plain relative name, else ``ValueError`` with the one-line refusal."""
    problem = name_problem(name, what, where)
    if problem is not None:
        raise ValueError(problem)
    assert isinstance(name, str)
    return name


def _join(root: Path, rel: str) -> Path | None:
    """``root/rel``, or None if the joined path would leave ``root`` lexically (belt and braces after the guard)."""
    joined = os.path.normpath(os.path.join(root, rel))
    base = os.path.normpath(root)
    try:
        inside = os.path.commonpath([base, joined]) == base
    except ValueError:  # different drives (Windows)
        inside = False
    return Path(joined) if inside else None


def find(kinds: Iterable[str], rel: str, *, want_dir: bool) -> Path | None:
    """The first existing ``<root>/rel`` over the roots of ``kinds`` (a folder or a file), else None.

    ``rel`` must already have passed :func:`guard`."""
    for kind in kinds:
        for root in roots(kind):
            cand = _join(root, rel)
            try:
                if cand is not None and (cand.is_dir() if want_dir else cand.is_file()):
                    return cand
            except OSError:
                continue
    return None


def locate(kinds: Sequence[str], name: object, what: str, *, want_dir: bool) -> Path:
    """The path of a listed entry: ``ValueError`` when the name is refused, ``FileNotFoundError`` when absent.

    Both messages are one line; the second names the folders searched and how to get the files."""
    where = " or ".join(f"models/{k}" for k in kinds)
    rel = guard(name, what, where).rstrip("/")
    found = find(kinds, rel, want_dir=want_dir)
    if found is None:
        raise FileNotFoundError(missing(name, what, kinds))
    return found


def missing(name: object, what: str, kinds: Sequence[str]) -> str:
    """One line: which entry is missing, where it was looked for, and how to get it."""
    searched = ", ".join(str(r) for k in kinds for r in roots(k)) or ", ".join(f"models/{k}" for k in kinds)
    return f"{what} {name!r} not found (searched {searched}): {models_hint(kinds[0])}"


# ----------------------------------------------------------------------------- the bounded walker


@dataclass(frozen=True)
class Entry:
    """One entry below a root: ``rel`` is its '/'-separated path relative to that root."""

    root: Path
    rel: str
    path: Path
    is_dir: bool


def walk(root: Path, max_depth: int = MAX_DEPTH, *, descend: Callable[[Entry], bool] | None = None) -> list[Entry]:
    """Files and folders below ``root`` (breadth first, sorted per folder), never raising.

    ``descend(entry)`` returning False keeps the walker out of a folder (e.g. one already recognised
    as a model). Symlinked folders are followed once: a folder whose (device, inode) was seen is not
    entered again, so link loops end. At most :data:`MAX_ENTRIES` entries are looked at."""
    out: list[Entry] = []
    try:
        st = root.stat()
    except OSError:
        return out
    if not stat.S_ISDIR(st.st_mode):
        return out
    seen = {(st.st_dev, st.st_ino)}
    frontier: collections.deque[tuple[Path, str, int]] = collections.deque([(root, "", 0)])
    budget = MAX_ENTRIES
    while frontier:
        folder, prefix, depth = frontier.popleft()
        try:
            listings.note_folder(folder, os.stat(folder).st_mtime_ns)  # a cached listing holds while this mtime does
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.debug("cannot list %s: %s", folder, e)
            continue
        for child in children:
            budget -= 1
            if budget < 0:
                log.warning("Bonsai Image: stopped listing %s after %d entries (is it the right folder?)", root, MAX_ENTRIES)
                return out
            if child.name.startswith("."):
                continue
            try:
                is_dir = child.is_dir()  # follows symlinks
                is_file = not is_dir and child.is_file()
            except OSError:
                continue
            if not (is_dir or is_file):
                continue  # broken links, FIFOs, sockets, devices
            if is_dir:
                try:
                    cst = os.stat(child.path)
                except OSError:
                    continue
                key = (cst.st_dev, cst.st_ino)
                if key in seen:
                    continue  # reached before (a link loop, or a second link to one folder): listed once
                seen.add(key)
            entry = Entry(root, prefix + child.name, Path(child.path), is_dir)
            out.append(entry)
            if is_dir and depth + 1 < max_depth and (descend is None or descend(entry)):
                frontier.append((entry.path, entry.rel + "/", depth + 1))
    return out


# ----------------------------------------------------------------------------- cached checks


def fingerprint(path: Path) -> tuple[Any, ...]:
    """(path, size, mtime_ns) of ``path`` and, for a folder, of what lies up to two levels below it.

    Changes whenever a file a loader would read is replaced, grows, shrinks or is touched. Never raises."""
    try:
        st = path.stat()
    except OSError:
        return (str(path), "absent")
    items: list[tuple[Any, ...]] = [(str(path), st.st_size, st.st_mtime_ns, stat.S_IFMT(st.st_mode))]
    if stat.S_ISDIR(st.st_mode):
        frontier = [(path, 0)]
        while frontier and len(items) < _FINGERPRINT_ENTRIES:
            folder, depth = frontier.pop()
            try:
                with os.scandir(folder) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for child in children[:_FINGERPRINT_ENTRIES]:
                try:
                    cst = child.stat()
                except OSError:
                    continue
                items.append((os.path.relpath(child.path, path), cst.st_size, cst.st_mtime_ns))
                if stat.S_ISDIR(cst.st_mode) and depth + 1 < _FINGERPRINT_DEPTH:
                    frontier.append((Path(child.path), depth + 1))
    return tuple(items)


_cache: collections.OrderedDict[tuple[str, str], tuple[tuple[Any, ...], str | None]] = collections.OrderedDict()


def check(tag: str, path: Path, fn: Check) -> str | None:
    """``fn(path)`` (None = loadable, else the reason), cached per ``tag`` and fingerprint of ``path``.

    Never raises: an exception from ``fn`` becomes the entry's reason (one line, no traceback)."""
    fp = fingerprint(path)
    key = (tag, str(path))
    hit = _cache.get(key)
    if hit is not None and hit[0] == fp:
        _cache.move_to_end(key)
        if hit[1] is None:
            listings.note_accepted(path, fp)
        return hit[1]
    problem = _run_check(path, fn)
    _cache[key] = (fp, problem)
    if problem is None:
        listings.note_accepted(path, fp)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return problem


def _run_check(path: Path, fn: Check) -> str | None:
    try:
        return fn(path)
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 -- a broken file (or a bug in a reader) must stay that entry's problem
        log.debug("check of %s failed", path, exc_info=True)
        text = str(e) or type(e).__name__
        # BonsaiFormatError already names the file; anything else gets it added.
        return text if str(path) in text else f"{path}: {type(e).__name__}: {text}"


def is_ok(tag: str, path: Path, fn: Check) -> bool:
    return check(tag, path, fn) is None


def _listing(name: str, kinds: Sequence[str], compute: Callable[[], Any]) -> tuple[str, Callable[[], Any]]:
    """The key of a listing (its roots are part of it) and ``compute`` noting each root's mtime first."""
    tops = [r for k in kinds for r in roots(k)]

    def noted() -> Any:
        for top in tops:  # folders listed by ComfyUI's own walker (diffusion_models) are noted through their root
            try:
                listings.note_folder(top, os.stat(top).st_mtime_ns)
            except OSError:
                continue
        return compute()

    return name + "|" + "|".join(str(t) for t in tops), noted


def cached_listing(name: str, kinds: Sequence[str], compute: Callable[[], Any], empty: Any) -> Any:
    """A dropdown listing of the roots of ``kinds`` for ``/object_info``, kept per folder by mtime (nodes/listings.py).

    Loader schemas call this instead of listing on ComfyUI's event loop every time; ``empty`` answers
    only when there is no earlier listing and the first one takes longer than a moment."""
    key, noted = _listing(name, kinds, compute)
    return listings.cached(key, noted, empty, fingerprint)


def prewarm_listing(name: str, kinds: Sequence[str], compute: Callable[[], Any]) -> None:
    """Start :func:`cached_listing`'s listing in the background when the pack loads, ready for the first call."""
    listings.start(*_listing(name, kinds, compute))


def forget() -> None:
    """Drop every cached check and listing (tests; a long-running server never needs it: fingerprints expire entries)."""
    _cache.clear()
    listings.forget()


register()
