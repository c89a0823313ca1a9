"""Why a download failed, in one message that also says how to finish the install by hand.

huggingface_hub wraps the real cause (a failed HEAD request becomes ``LocalEntryNotFoundError``
*from* a ``ConnectError``), and its HTTP client is ``httpx`` or a fork of it depending on the
version, so causes are recognised along the whole exception chain and by class name.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

# kinds of DownloadError
OFFLINE = "offline"
STALLED = "stalled"
DROPPED = "dropped"
NOT_FOUND = "not_found"
AUTH = "auth"
DISK_FULL = "disk_full"
UNSAFE_NAME = "unsafe_name"
CORRUPT = "corrupt"
FAILED = "failed"

_CONNECT = {"ConnectError", "ConnectTimeout", "ProxyError", "OfflineModeIsEnabled", "ConnectionRefusedError", "gaierror"}
_STALL = {"ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutError", "timeout", "Timeout"}
_DROPPED = {"RemoteProtocolError", "ReadError", "ConnectionResetError", "ChunkedEncodingError", "IncompleteRead"}
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DownloadError(RuntimeError):
    """A download that cannot complete. ``kind`` is one of the constants above; the message names
    the repo and the folder and says what to do (including the manual install steps)."""

    def __init__(self, message: str, kind: str = FAILED) -> None:
        super().__init__(message)
        self.kind = kind


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes/contexts, outermost first (each once)."""
    seen: set[int] = set()
    cur: BaseException | None = error
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _names(error: BaseException) -> set[str]:
    return {c.__name__ for e in chain(error) for c in type(e).__mro__}


def _status(error: BaseException) -> int | None:
    for e in chain(error):
        response = getattr(e, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def classify(error: BaseException) -> str:
    """The kind of a failure raised by huggingface_hub or the file system."""
    for e in chain(error):
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return DISK_FULL
    names = _names(error)
    if "GatedRepoError" in names:
        return AUTH
    if names & {"RepositoryNotFoundError", "RevisionNotFoundError", "RemoteEntryNotFoundError"}:
        return NOT_FOUND
    status = _status(error)
    if status in (401, 403):
        return AUTH
    if status == 404:
        return NOT_FOUND
    # A connect timeout means the Hub was never reached; a read timeout means it stopped answering.
    if names & _CONNECT:
        return OFFLINE
    if names & _STALL or "TimeoutException" in names:
        return STALLED
    if names & _DROPPED:
        return DROPPED
    if "LocalEntryNotFoundError" in names:
        return OFFLINE  # huggingface_hub's "check your connection" without a recognisable cause
    return FAILED


def manual_steps(repo_id: str, target: Path, needed: str) -> str:
    return (
        f"To install by hand: download https://huggingface.co/{repo_id}/tree/main (keep its folder structure) "
        f"into {target}/ - needed: {needed}. Then refresh ComfyUI (press R) and pick the folder in the Bonsai loaders; "
        "no network is needed after that."
    )


def describe(error: BaseException, *, repo_id: str, target: Path, endpoint: str, needed: str, what: str) -> DownloadError:
    """One :class:`DownloadError` for ``error`` (raised while ``what``: "listing the repository" or
    "downloading <file>"), with the manual steps."""
    kind = classify(error)
    steps = manual_steps(repo_id, target, needed)
    cause = _root_cause(error)
    if kind == OFFLINE:
        head = f"Cannot reach the Hugging Face Hub at {endpoint} while {what} ({cause})."
    elif kind == STALLED:
        head = (
            f"The Hugging Face Hub at {endpoint} stopped answering while {what}: no data arrived in time ({cause}). "
            "Run the same download again later: completed files are kept and the rest is resumed."
        )
    elif kind == DROPPED:
        head = (
            f"The connection to the Hugging Face Hub at {endpoint} kept dropping while {what} ({cause}). "
            "Run the same download again: completed files are kept and a partial file is resumed."
        )
    elif kind == NOT_FOUND:
        head = (
            f"{repo_id} was not found on the Hub at {endpoint} while {what} ({cause}). "
            "Check the variant and release, or whether the repo moved (https://huggingface.co/prism-ml)."
        )
    elif kind == AUTH:
        head = (
            f"The Hub refused access to {repo_id} while {what} ({cause}). "
            "Log in with `hf auth login` (or set HF_TOKEN) if the repo needs an account."
        )
    elif kind == DISK_FULL:
        head = f"Not enough disk space in {target} while {what} ({cause}). Free some space or download into another models folder."
    else:
        head = f"{repo_id}: {what} failed ({cause})."
    return DownloadError(f"{head} {steps}", kind)


def _root_cause(error: BaseException) -> str:
    """``Type: message`` of the innermost cause (the most specific), shortened."""
    last = list(chain(error))[-1]
    text = str(last).strip().splitlines()[0] if str(last).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(last).__name__}: {text}" if text else type(last).__name__


def not_enough_space(repo_id: str, target: Path, need: int, free: int, needed: str) -> DownloadError:
    return DownloadError(
        f"Not enough disk space in {target}: the download needs {need / 1e9:.2f} GB more and {free / 1e9:.2f} GB are free. "
        f"Free some space or download into another models folder. {manual_steps(repo_id, target, needed)}",
        DISK_FULL,
    )
