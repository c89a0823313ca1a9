"""What a release folder on disk says about how it got there: an interrupted download, its repo.

huggingface_hub writes each file first as ``*.incomplete`` and renames it when complete: into
``<snapshot>/.cache/huggingface/download/<folder>/`` when downloading into a folder (what the pack's
downloader and ``hf download --local-dir`` do), into ``models--<owner>--<repo>/blobs/`` in its own
cache layout. A release folder with such a file was interrupted mid-file; running the same download
again resumes it. The loaders add that advice to their "not found" and "truncated" lines. Torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .hub_names import RELEASES, VARIANT_BITS

LOCAL_DIR_CACHE = (".cache", "huggingface", "download")  # huggingface_hub's per-folder metadata and partial files
HUB_CACHE_PREFIX = "models--"  # huggingface_hub's cache layout: models--<owner>--<repo>/{blobs,snapshots/<commit>}
PARTIAL_SUFFIX = ".incomplete"
_MAX_LISTED = 256  # partial files looked at per folder (there is normally one)
_REPO = re.compile(r"bonsai-image-(?P<variant>binary|ternary)-4B-(?P<release>gemlite|mlx|unpacked)(?:-[12]bit)?")


def _partials(folder: Path, recursive: bool) -> list[Path]:
    out: list[Path] = []
    try:
        walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
        for base, _dirs, files in walker:
            out += [Path(base) / f for f in files if f.endswith(PARTIAL_SUFFIX)]
            if len(out) >= _MAX_LISTED:
                break
    except OSError:
        return out
    return out


def release_root(path: Path, stop: Path | None = None) -> Path:
    """The release folder ``path`` belongs to: itself or the nearest parent that holds a download's
    traces (huggingface_hub's ``.cache``, a ``models--*/snapshots/<commit>``) or has a release's name,
    not above ``stop``."""
    path = Path(path)
    for cand in (path, *path.parents):
        if stop is not None and stop != cand and stop not in cand.parents:
            break
        if (cand.joinpath(*LOCAL_DIR_CACHE)).is_dir() or _hub_cache_repo(cand) is not None or _REPO.fullmatch(cand.name):
            return cand
    return path


def _hub_cache_repo(snapshot: Path) -> Path | None:
    """``models--<owner>--<repo>`` when ``snapshot`` is ``.../models--*/snapshots/<commit>``."""
    repo = snapshot.parent.parent
    return repo if snapshot.parent.name == "snapshots" and repo.name.startswith(HUB_CACHE_PREFIX) else None


def interrupted_files(release: Path) -> list[str]:
    """Files of ``release`` whose download stopped mid-file (names relative to the release where known)."""
    release = Path(release)
    cache = release.joinpath(*LOCAL_DIR_CACHE)
    folders = {p.relative_to(cache).parent.as_posix() for p in _partials(cache, recursive=True)} if cache.is_dir() else set()
    names = [f"a file in {d}/" if d != "." else "a top-level file" for d in folders]
    repo = _hub_cache_repo(release)
    if repo is not None:
        names += [f"blob {p.name[:12]}" for p in _partials(repo / "blobs", recursive=False)]
    return sorted(set(names))


def repo_of(release: Path) -> tuple[str, str] | None:
    """(variant, release kind) from a release folder's name (or its hub-cache repo's name), if it is one."""
    repo = _hub_cache_repo(release)
    for name in (release.name, repo.name if repo is not None else ""):
        m = _REPO.search(name)
        if m and m["variant"] in VARIANT_BITS and m["release"] in RELEASES:
            return m["variant"], m["release"]
    return None


def download_command(release: Path, pack_folder: str) -> str:
    """The download that made ``release`` (to run it again), or the generic one."""
    found = repo_of(release)
    variant, kind = found if found else ("ternary", "gemlite")
    extra = f" --release {kind}" if kind != "gemlite" else ""
    return f"python custom_nodes/{pack_folder}/bonsai.py download {variant}{extra}"


def resume_hint(path: Path, pack_folder: str, stop: Path | None = None) -> str | None:
    """One clause for a loader message when ``path`` lies in a release whose download was interrupted, else None."""
    release = release_root(Path(path), stop)
    partial = interrupted_files(release)
    if not partial:
        return None
    shown = ", ".join(partial[:3]) + (f" and {len(partial) - 3} more" if len(partial) > 3 else "")
    return (
        f"the download into {release} was interrupted ({shown} not finished): run the same download again to resume it "
        f'(the "Bonsai Download Model" node, or `{download_command(release, pack_folder)}`)'
    )
