"""Model folders for the ComfyUI tests: per-module roots searched first, and the check that nothing leaks.

Fixtures under release names (snapshot folders, canonical files the downloader names) must live in a
module's own root: in the shared root every later test module would find them and skip writing its own
(complete) fixture of that name, so failures would depend on test order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_KINDS = ("bonsai", "diffusion_models", "text_encoders", "vae", "loras")
RELEASE_PREFIX = "bonsai-image-"  # how the downloader names releases


@contextlib.contextmanager
def models_root(folder_paths: Any, root: Path, kinds: tuple[str, ...] = MODEL_KINDS) -> Iterator[Path]:
    """Make ``root/<kind>`` the first folder ComfyUI searches for each kind, for the duration of the block.

    Fixtures installed here use the release names other test modules also use for their own fixtures;
    searched first they win while this module runs, and afterwards ComfyUI no longer sees them.
    """
    added: list[tuple[str, str]] = []
    for kind in kinds:
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)
        added.append((kind, str(d)))
    _forget_listings(folder_paths, kinds)
    try:
        yield root
    finally:
        for kind, d in added:
            paths = folder_paths.folder_names_and_paths[kind][0]
            if d in paths:
                paths.remove(d)
        _forget_listings(folder_paths, kinds)


def _forget_listings(folder_paths: Any, kinds: tuple[str, ...]) -> None:
    # ComfyUI caches file listings per kind (checked by folder mtimes): drop them when the folder list changes.
    for kind in kinds:
        folder_paths.filename_list_cache.pop(kind, None)


def release_named_entries(models_dir: Path) -> list[str]:
    """Entries of a models root (``<kind>/<name>``) carrying a release name."""
    return sorted(
        f"{kind}/{p.name}" for kind in MODEL_KINDS if (models_dir / kind).is_dir() for p in (models_dir / kind).iterdir() if p.name.startswith(RELEASE_PREFIX)
    )


def add_session_folders(folder_paths: Any, models_dir: Path) -> None:
    """The session's temporary models root first in ComfyUI's search list; outputs and temp files under it."""
    for kind in MODEL_KINDS:
        d = models_dir / kind
        d.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)
    folder_paths.set_output_directory(str(models_dir / "output"))
    folder_paths.set_temp_directory(str(models_dir / "temp"))
