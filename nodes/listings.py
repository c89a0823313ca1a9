"""Dropdown listings cached per folder by mtime, redone off the event loop, waited for a bounded time.

ComfyUI builds ``/object_info`` on its event-loop thread, calling every loader's schema, which lists
the model folders. Walking a folder and checking each entry costs time proportional to what the folder
holds (20,000 junk entries: seconds per call, every call, while the whole server waits). So a listing is
kept with its **signature**: the mtime of every folder the walk listed and the fingerprint of every
entry it accepted, both noted while it ran (:func:`note_folder`, :func:`note_accepted`).

A call returns the kept listing when the signature still holds and it is younger than
:data:`MAX_AGE_S` (the age catches what no folder mtime shows, such as a file rewritten in place deep in
a rejected folder). Otherwise the listing is redone in a background thread (one listing at a time) and
the call waits for it at most :data:`WAIT_S` when the last one was slow, else :data:`QUICK_WAIT_S`; if
it takes longer, the call returns the previous listing (or an empty one, the very first time) and a
later call gets the new one. Checking the signature costs one ``stat`` per listed folder plus the
accepted entries' fingerprints; for a large listing it is checked at most every :data:`RECHECK_S`.

No ComfyUI import, no import of the folder service (it passes its fingerprint function in).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..bonsai_core.escape import escaping_logger

log = escaping_logger("bonsai_image.listings")

T = TypeVar("T")

MAX_AGE_S = 30.0  # a listing older than this (or 20x its own duration) is redone in the background
RECHECK_S = 2.0  # a large listing's signature is checked at most this often (a check stats every listed folder)
LARGE = 1000  # folders + accepted entries from which a listing counts as large
WAIT_S = 0.35  # the longest a call waits for a slow listing being redone (it runs on ComfyUI's event loop)
SLOW_S = 1.0  # a listing that took longer than this is slow
QUICK_WAIT_S = 5.0  # the longest a call waits for a quick listing, or for the very first one
MAX_NOTED = 50_000  # folders/entries noted per listing; past this the listing is only kept MAX_AGE_S


@dataclass
class _Notes:
    folders: dict[str, int] = field(default_factory=dict)  # path -> st_mtime_ns when listed
    accepted: dict[str, Any] = field(default_factory=dict)  # path -> fingerprint when accepted
    overflow: bool = False


@dataclass
class _Kept:
    value: Any = None
    notes: _Notes | None = None
    at: float = 0.0  # when the listing finished
    max_age: float = MAX_AGE_S
    took: float = 0.0  # how long the listing took
    checked_at: float = 0.0  # when its signature last held
    running: concurrent.futures.Future[Any] | None = None


_local = threading.local()
_kept: dict[str, _Kept] = {}
_lock = threading.Lock()
_one_at_a_time = threading.Lock()  # listings run one after another: two at once only share the CPU and the GIL


def note_folder(path: str | os.PathLike[str], mtime_ns: int) -> None:
    """Called by the walker for each folder it lists (a no-op outside a cached listing)."""
    notes: _Notes | None = getattr(_local, "notes", None)
    if notes is not None:
        if len(notes.folders) < MAX_NOTED:
            notes.folders[os.fspath(path)] = mtime_ns
        else:
            notes.overflow = True


def note_accepted(path: str | os.PathLike[str], fingerprint: Any) -> None:
    """Called by the check cache for each entry that passed its check (a no-op outside a cached listing)."""
    notes: _Notes | None = getattr(_local, "notes", None)
    if notes is not None:
        if len(notes.accepted) < MAX_NOTED:
            notes.accepted[os.fspath(path)] = fingerprint
        else:
            notes.overflow = True


def _still_holds(notes: _Notes, fingerprint: Callable[[Any], Any]) -> bool:
    if notes.overflow:
        return False
    for path, mtime in notes.folders.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    from pathlib import Path

    return all(fingerprint(Path(p)) == fp for p, fp in notes.accepted.items())


def _run(name: str, compute: Callable[[], T], future: concurrent.futures.Future[T]) -> None:
    _one_at_a_time.acquire()
    _local.notes = notes = _Notes()
    began = time.monotonic()
    try:
        value = compute()
    except BaseException as e:  # noqa: BLE001 -- handed to the waiting call; a listing never kills the thread silently
        log.warning("Bonsai Image: listing %s failed: %s", name, e)
        future.set_exception(e)
        with _lock:
            _kept.setdefault(name, _Kept()).running = None
        return
    finally:
        _local.notes = None
        _one_at_a_time.release()
    now = time.monotonic()
    took = now - began
    with _lock:
        kept = _kept.setdefault(name, _Kept())
        kept.value, kept.notes, kept.at, kept.checked_at, kept.running = value, notes, now, now, None
        kept.max_age, kept.took = max(MAX_AGE_S, 20 * took), took
    if took > WAIT_S:
        log.info("Bonsai Image: listing %s took %.1f s (done in the background; ComfyUI showed the previous listing meanwhile)", name, took)
    future.set_result(value)


def _start(name: str, compute: Callable[[], T]) -> concurrent.futures.Future[T]:
    with _lock:
        kept = _kept.setdefault(name, _Kept())
        if kept.running is not None:
            return kept.running
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        kept.running = future
    threading.Thread(target=_run, args=(name, compute, future), name=f"bonsai-listing-{name}", daemon=True).start()
    return future


def cached(name: str, compute: Callable[[], T], empty: T, fingerprint: Callable[[Any], Any]) -> T:
    """``compute()`` (a listing), kept and reused while its signature holds; see the module docstring.

    ``empty`` is returned when there is no earlier listing and the first one takes longer than
    :data:`WAIT_S`; ``fingerprint(path)`` is the folder service's fingerprint of an accepted entry."""
    now = time.monotonic()
    with _lock:
        kept = _kept.get(name)
        if kept is None or kept.notes is None:
            value, notes, wait = empty, None, QUICK_WAIT_S
        else:
            value, notes = kept.value, kept.notes
            wait = WAIT_S if kept.took > SLOW_S else QUICK_WAIT_S
            large = len(notes.folders) + len(notes.accepted) >= LARGE
            if large and now - kept.at < kept.max_age and now - kept.checked_at < RECHECK_S:
                return value
    if notes is not None and kept is not None and now - kept.at < kept.max_age and _still_holds(notes, fingerprint):
        with _lock:
            kept.checked_at = now
        return value
    future = _start(name, compute)
    try:
        return future.result(timeout=wait)
    except concurrent.futures.TimeoutError:
        return value  # the new listing lands in the background; the next call gets it
    except Exception:
        if notes is None:
            raise  # no earlier listing to show: the failure is the schema's (a bug, logged by the listing thread)
        return value  # logged by the listing thread; the earlier listing keeps the node usable


def start(name: str, compute: Callable[[], Any]) -> None:
    """Begin a listing in the background (at pack load), so the first ``/object_info`` finds it ready."""
    _start(name, compute)


def forget() -> None:
    """Drop every kept listing (tests)."""
    with _lock:
        _kept.clear()
