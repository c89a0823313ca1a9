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
* An ``OSError`` while writing (read-only folder, full disk) becomes one :class:`OutputPathError`
  naming the target.
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``target``; on success rename it to ``target``.

    The caller creates a file or a folder at the yielded path. A folder output needs ``target``
    to be absent (a folder is never replaced); a file output may replace a regular file.
    """
    target = check_output_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(target, f"cannot create the output folder: {e.strerror or e}") from e
    remove_stale_partials(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_PARTIAL, dir=target.parent)
    except OSError as e:
        raise OutputPathError(target, f"cannot write next to the output: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM):
                raise OutputPathError(target, f"writing failed: {e.strerror or e}") from e
            raise
        if not tmp.exists():
            raise OutputPathError(target, "the writer produced nothing (internal error)")
        _commit(tmp, target)
    except BaseException:
        _remove_temporary(tmp)
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
