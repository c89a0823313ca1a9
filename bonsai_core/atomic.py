"""Writes that can only add: write beside the target, then rename over it.

Promises (tested in ``tests/core/test_atomic.py``):

* Nothing that the write did not create is ever removed. An existing directory, symlink,
  device, FIFO or socket where the output should go is refused with :class:`OutputPathError`
  before any work is done; only an existing *regular file* is replaced, by one ``rename``.
* A failed or interrupted write (exception, Ctrl-C, SIGTERM/SIGHUP through
  :func:`exit_on_termination`) leaves the target as it was and removes its temporary.
* A temporary left by a process that died without cleaning up (SIGKILL, power loss) is
  removed by the next write to the same target. The temporary's name carries the writer's
  PID, so a concurrent writer's live temporary is never touched.
* A write below folders that do not exist yet writes the topmost of them under a temporary name
  and renames it at the end, so an interrupted write leaves no new (empty or half) folder behind.
* The disk refusing a write (full, quota, file too large, I/O error, read-only, permission), as an
  ``OSError`` from any writer or torch.save's stream-writer error, becomes one
  :class:`OutputPathError` line naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import BonsaiFormatError

_PARTIAL = ".partial"


class OutputPathError(BonsaiFormatError):
    """The output path cannot be written safely (it exists as a folder or special file, or the disk refused)."""

    def __init__(self, path: object, message: str) -> None:
        super().__init__(path, None, message)


def check_output_path(target: str | os.PathLike[str]) -> Path:
    """Refuse an output path that is not absent or a regular file; returns it as a ``Path``.

    Called at the start of every write so that a wrong argument (``convert model.safetensors .``)
    fails before any work and without touching what is there.
    """
    target = Path(target)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as e:
        raise OutputPathError(target, f"cannot check the output path: {e.strerror or e}") from e
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(target, "the output path is a symbolic link; give a new file name (nothing was written)")
    if stat.S_ISDIR(st.st_mode):
        raise OutputPathError(target, "the output path is an existing folder; give a new file or folder name (nothing was written)")
    if not stat.S_ISREG(st.st_mode):
        raise OutputPathError(target, "the output path exists and is not a regular file; give a new name (nothing was written)")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we cannot tell: leave it
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` left by writers that no longer run (same host); returns what was removed."""
    removed: list[Path] = []
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_PARTIAL)):
            continue
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _remove_temporary(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()


# errnos that mean "the disk refused the write": one OutputPathError line, whichever writer met them
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM})
# Writers that lose the errno: torch.save's C++ stream writer ("file write failed", or "unexpected pos"
# when a short write went unnoticed) and numpy's tofile ("65536 requested and 63072 written").
_SHORT_WRITE_MARKERS = ("file write failed", "PytorchStreamWriter failed", "unexpected pos", "requested and")
_NEARLY_FULL = 1 << 20  # bytes free below which an errno-less short write is taken as a full disk


def disk_error(error: BaseException, where: Path | None = None) -> str | None:
    """Why the disk refused a write, when ``error`` or an exception it came from says so; else None.

    An errno-less short write (see ``_SHORT_WRITE_MARKERS``) is named "No space left on device" when
    the filesystem holding ``where`` is (nearly) full, else by the writer's own message."""
    seen: set[int] = set()
    cur: BaseException | None = error
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _DISK_ERRNOS:
            return cur.strerror or os.strerror(cur.errno)
        if isinstance(cur, (RuntimeError, OSError)) and any(m in str(cur) for m in _SHORT_WRITE_MARKERS):
            if where is not None and _free_bytes(where) < _NEARLY_FULL:
                return os.strerror(errno.ENOSPC)
            return f"short write ({str(cur).strip().splitlines()[-1][:200]})"
        cur = cur.__cause__ or cur.__context__
    return None


def _free_bytes(where: Path) -> int:
    for p in (where, *where.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return 1 << 62


def _topmost_missing(folder: Path) -> Path | None:
    """The highest folder on the way to ``folder`` that does not exist yet (None when ``folder`` exists)."""
    top = None
    while not os.path.lexists(folder) and folder.parent != folder:
        top, folder = folder, folder.parent
    return top


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``target``; on success rename it to ``target``.

    The caller creates a file or a folder at the yielded path. A folder output needs ``target``
    to be absent (a folder is never replaced); a file output may replace a regular file.

    When folders on the way to ``target`` do not exist yet, the topmost of them is what is written
    under a temporary name and renamed at the end: an interrupted write leaves no new folder behind
    (which would make the same command refuse its own output the next time).
    """
    target = check_output_path(target)
    top = _topmost_missing(target.parent)
    if top is not None:
        with _atomic_new_folder(target, top) as tmp:
            yield tmp
        return
    remove_stale_partials(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_PARTIAL, dir=target.parent)
    except OSError as e:
        raise OutputPathError(target, f"cannot write next to the output: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        with _named_disk_errors(target):
            yield tmp
        if not tmp.exists():
            raise OutputPathError(target, "the writer produced nothing (internal error)")
        _commit(tmp, target)
    except BaseException:
        _remove_temporary(tmp)
        raise


@contextlib.contextmanager
def _named_disk_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        reason = disk_error(e, target.parent)
        if reason is None or isinstance(e, BonsaiFormatError):
            raise
        raise OutputPathError(target, f"writing failed: {reason}") from e


@contextlib.contextmanager
def _atomic_new_folder(target: Path, top: Path) -> Iterator[Path]:
    """:func:`atomic_path` for a target below folders that do not exist: ``top`` is written as a temporary."""
    remove_stale_partials(top)
    try:
        tmp_top = Path(tempfile.mkdtemp(prefix=f".{top.name}.{os.getpid()}.", suffix=_PARTIAL, dir=top.parent))
    except OSError as e:
        raise OutputPathError(target, f"cannot create the output folder: {e.strerror or e}") from e
    try:
        tmp = tmp_top / target.relative_to(top)
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputPathError(target, f"cannot create the output folder: {e.strerror or e}") from e
        with _named_disk_errors(target):
            yield tmp
        if not tmp.exists():
            raise OutputPathError(target, "the writer produced nothing (internal error)")
        if os.path.lexists(top):
            raise OutputPathError(top, "appeared while the output was written; a new folder is never written over an existing path")
        try:
            os.rename(tmp_top, top)
        except OSError as e:
            raise OutputPathError(target, f"cannot move the finished folder into place: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp_top, ignore_errors=True)
        raise


def _commit(tmp: Path, target: Path) -> None:
    # Re-check: another process may have created something at the target while we wrote.
    check_output_path(target)
    if tmp.is_dir():
        if os.path.lexists(target):
            raise OutputPathError(target, "the output exists; a folder output is never written over an existing path")
        try:
            os.rename(tmp, target)
        except OSError as e:
            raise OutputPathError(target, f"cannot move the finished folder into place: {e.strerror or e}") from e
        return
    try:
        os.replace(tmp, target)
    except OSError as e:
        raise OutputPathError(target, f"cannot move the finished file into place: {e.strerror or e}") from e


class _Terminated(SystemExit):
    """Raised in the main thread on SIGTERM/SIGHUP so that every ``atomic_path`` cleans up."""


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception while the block runs (CLI commands that write).

    The default action of these signals kills the process without running ``finally`` blocks,
    which would leave ``.partial`` temporaries behind.
    """
    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]

    def _raise(signum: int, _frame: object) -> None:
        raise _Terminated(128 + signum)

    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, _raise)
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
