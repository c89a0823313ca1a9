"""What is installed, in the words a loader message or the on-open notice needs: the next step.

Not a node module. It knows four situations a bare "not found" would leave the user in:

* **interrupted downloads** -- a release folder holding huggingface_hub's ``*.incomplete`` files
  (:mod:`bonsai_core.download.partial`): "run the same download again to resume";
* **other entries installed** -- the loader's own list is not empty: "pick one of these";
* **a canonical file that was never made** -- the download gives the snapshot folder, the single
  file needs ``--to-canonical``;
* **misplaced releases** -- a release folder copied into ``models/diffusion_models/`` (or ``unet``,
  ``checkpoints``), where no Bonsai loader looks and the stock loader lists its raw files and fails
  with ``KeyError: 'x_embedder.bias'``: "move it to models/bonsai/".

It also lets the loaders list Hugging Face cache layouts (``models--<owner>--<repo>/snapshots/<commit>/``,
what ``hf download`` without ``--local-dir`` writes) under ``models/bonsai``: :func:`walk` counts such a
snapshot as one level, as if it were ``<repo>/``.

The on-open notice (``web/bonsai_missing_models.js``) reads the interrupted and misplaced releases and
the server's platform from ``GET /bonsai_image/installed`` (:func:`register_route`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..bonsai_core.download.partial import HUB_CACHE_PREFIX, download_command, interrupted_files, release_root, repo_of, resume_hint
from ..bonsai_core.escape import escaping_logger
from . import folders

log = escaping_logger("bonsai_image.installed")

MISPLACED_KINDS = ("diffusion_models", "unet", "checkpoints")  # where a copied release is seen by the stock loaders only
_RELEASE_NAME = re.compile(r"(bonsai-image-|models--prism-ml--bonsai-image-)")
_TRANSFORMER_DIRS = re.compile(r"transformer-gemlite-int[12]|transformer-packed-mflux")
CANONICAL_FILE = re.compile(r"bonsai-image-(binary|ternary)-4B\.safetensors")
ROUTE = "/bonsai_image/installed"
_MAX_SHOWN = 6  # entries named in one message


# ----------------------------------------------------------------------------- hub-cache aware listing


def hub_levels(rel: str) -> int:
    """How many of ``rel``'s leading parts are hub-cache plumbing (``models--x/``, ``snapshots/``)."""
    parts = rel.split("/")
    if not parts[0].startswith(HUB_CACHE_PREFIX):
        return 0
    return 2 if len(parts) >= 2 and parts[1] == "snapshots" else 1


def walk(root: Path, depth: int, descend: Callable[[folders.Entry], bool] | None = None) -> list[folders.Entry]:
    """:func:`folders.walk` to ``depth`` levels, where ``models--<repo>/snapshots/<commit>`` counts as one level."""

    def deeper(e: folders.Entry) -> bool:
        level = e.rel.count("/") - hub_levels(e.rel)
        return level + 1 < depth and (descend is None or descend(e))

    return folders.walk(root, depth + 2, descend=deeper)


def listed_depth_ok(rel: str, depth: int) -> bool:
    """Whether an entry found by :func:`walk` is within the loader's own depth (hub plumbing not counted)."""
    return rel.count("/") - hub_levels(rel) < depth


# ----------------------------------------------------------------------------- interrupted downloads


def _bonsai_root_of(path: Path) -> Path | None:
    for root in folders.roots(folders.BONSAI):
        if root == path or root in path.parents:
            return root
    return None


def is_interrupted(path: Path) -> bool:
    """``path`` (a release or a part of one under models/bonsai) belongs to a release whose download stopped mid-file."""
    return bool(interrupted_files(release_root(path, _bonsai_root_of(path))))


def resume(path: Path | None) -> str | None:
    """The "run the same download again" clause for ``path``, if its release was interrupted."""
    if path is None:
        return None
    try:
        return resume_hint(path, folders.PACK_DIR, _bonsai_root_of(path))
    except OSError:
        return None


def nearest_existing(kinds: Sequence[str], rel: str) -> Path | None:
    """The deepest existing folder on the way to ``rel`` (a missing part's release folder), under the roots of ``kinds``."""
    parts = [p for p in rel.strip("/").split("/") if p]
    for n in range(len(parts), 0, -1):
        found = folders.find(kinds, "/".join(parts[:n]), want_dir=True)
        if found is not None:
            return found
    return None


def with_resume(message: str, path: Path | None) -> str:
    """``message`` plus "run the same download again" when ``path``'s release was interrupted, or when the
    message says a file is truncated and ``path`` lies in a downloaded release (the downloader replaces a
    file that fails the Hub's size and hash check)."""
    hint = resume(path)
    if hint is None and path is not None and "truncated" in message:
        release = release_root(path, _bonsai_root_of(path))
        if repo_of(release) is not None:
            hint = (
                "run the same download again: it replaces files that fail the Hub's size and hash check "
                f'(the "Bonsai Download Model" node, or `{download_command(release, folders.PACK_DIR)}`)'
            )
    return f"{message}; {hint}" if hint else message


# ----------------------------------------------------------------------------- misplaced releases


def _looks_like_release(entry: folders.Entry) -> bool:
    if not entry.is_dir:
        return False
    if _RELEASE_NAME.match(entry.path.name):
        return True
    try:
        return any(_TRANSFORMER_DIRS.fullmatch(c.name) for c in entry.path.iterdir() if c.is_dir())
    except OSError:
        return False


def misplaced_releases() -> list[str]:
    """``models/<kind>/<folder>`` for release folders copied where only the stock loaders look."""
    out: list[str] = []
    for kind in MISPLACED_KINDS:
        for root in folders.roots(kind):
            for e in folders.walk(root, 2, descend=lambda e: not _looks_like_release(e)):
                if _looks_like_release(e):
                    out.append(f"models/{kind}/{e.rel}")
    return sorted(set(out))


def misplaced_hint() -> str | None:
    found = misplaced_releases()
    if not found:
        return None
    return (
        f"a Bonsai release is in {', '.join(found[:_MAX_SHOWN])}, where no Bonsai loader looks (the stock Load Diffusion Model lists "
        f"its files and fails with KeyError 'x_embedder.bias'): move the folder to models/{folders.BONSAI}/ and press R"
    )


# ----------------------------------------------------------------------------- the next step for a missing name


def pick_hint(installed: Iterable[str], name: object = None) -> str | None:
    """"pick one of these installed entries" (named), when the loader's list is not empty."""
    entries = list(installed)
    if not entries:
        return None
    if isinstance(name, str) and CANONICAL_FILE.fullmatch(name.rsplit("/", 1)[-1]):
        variant = CANONICAL_FILE.fullmatch(name.rsplit("/", 1)[-1])[1]  # type: ignore[index]
        folders_of_variant = [e for e in entries if e.endswith("/") and f"-{variant}-" in e]
        if folders_of_variant:
            return (
                f"the download gives the release folder, not this single file (that needs `download {variant} --to-canonical`): "
                f"pick {folders_of_variant[0]!r} instead"
            )
    shown = ", ".join(repr(e) for e in entries[:_MAX_SHOWN]) + (f" (+{len(entries) - _MAX_SHOWN} more)" if len(entries) > _MAX_SHOWN else "")
    return f"pick one of these installed entries: {shown}"


def not_found(message: str, name: object, kinds: Sequence[str], installed: Iterable[str]) -> str:
    """A loader's "not found" line with the next step: resume an interrupted download, pick an installed
    entry, or move a misplaced release (the download advice already in ``message`` stays last resort)."""
    rel = name.strip("/") if isinstance(name, str) else ""
    extra = [resume(nearest_existing(kinds, rel)) if rel else None, pick_hint(installed, name), misplaced_hint()]
    return "; ".join([message, *(e for e in extra if e)])


# ----------------------------------------------------------------------------- the notice's route


def state() -> dict[str, Any]:
    """What the on-open notice needs beyond the loaders' lists."""
    interrupted = []
    for root in folders.roots(folders.BONSAI):
        for e in walk(root, 2):
            if e.is_dir and listed_depth_ok(e.rel, 2) and hub_levels(e.rel) != 1 and interrupted_files(e.path):
                interrupted.append({"folder": e.rel + "/", "hint": resume(e.path)})
    return {"platform": sys.platform, "interrupted": interrupted, "misplaced": misplaced_releases(), "misplaced_hint": misplaced_hint()}


def register_route() -> bool:
    """Serve :func:`state` at :data:`ROUTE` on ComfyUI's server (once; False when there is no server)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_bonsai_installed_route", False):
        return instance is not None

    @instance.routes.get(ROUTE)
    async def installed(_request: Any) -> Any:
        return web.json_response(state())

    instance._bonsai_installed_route = True
    return True
