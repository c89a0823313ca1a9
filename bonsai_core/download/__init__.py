"""Fetch a released Bonsai Image 4B repo into ComfyUI's ``models/bonsai/<repo-name>/`` and verify it.

Only the files the chosen release needs are fetched (:mod:`.hub_names`), and every name the Hub
lists is checked by the pack before anything is written. Transfers are huggingface_hub's
(``hf_hub_download`` into a local folder, one file at a time, at one pinned commit): complete files
are skipped and a dropped connection resumes with an HTTP range request. Each file is then checked
against the Hub's metadata (size, and the LFS sha256 or the git blob id). Failures become one
:class:`DownloadError` with the manual install steps (:mod:`.download_errors`). Nothing is ever
pip-installed. The command line is in :mod:`.cli_download`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..escape import escaping_logger
from .errors import CORRUPT, DROPPED, UNSAFE_NAME, DownloadError, classify, describe, not_enough_space
from .hub_names import (
    AUTO_RELEASE,
    COMPONENTS,
    MANIFEST,
    OWNER,
    RELEASES,
    VARIANT_BITS,
    UnsafeRemoteName,
    check_remote_name,
    is_plain_name,
    needed_description,
    repo_name,
    resolve_release,
    select_files,
)
from .models_dir import resolve_models_location

log = escaping_logger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # no answer for this long = a stalled Hub (huggingface_hub's body reads use HF_HUB_DOWNLOAD_TIMEOUT)
RESUMES = 3  # a dropped connection is resumed this many times per file before the download fails
SPACE_MARGIN = 64 << 20  # keep this much free beyond the files themselves (metadata, the manifest, the file system)
ProgressFn = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)

__all__ = [
    "AUTO_RELEASE",
    "COMPONENTS",
    "OWNER",
    "RELEASES",
    "VARIANT_BITS",
    "DownloadError",
    "DownloadResult",
    "canonical_name",
    "download",
    "repo_name",
    "select_files",
]


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (small files)


@dataclass
class DownloadResult:
    repo_id: str
    commit: str
    local_dir: Path
    files: list[str]
    total_bytes: int
    downloaded: list[str] = field(default_factory=list)  # transferred in this run (the rest was already on disk)
    canonical: Path | None = None


def remote_files(
    repo_id: str, *, revision: str | None, endpoint: str | None, token: str | bool | None, timeout: float
) -> tuple[str, dict[str, RemoteFile]]:
    """(commit, files) from the Hub's repo info with file metadata (sizes, LFS sha256, blob ids)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
    files = {}
    for s in info.siblings or []:
        name = check_remote_name(s.rfilename, repo_id)
        lfs = s.lfs
        size = lfs.size if lfs is not None else s.size
        if not isinstance(size, int) or size < 0:
            raise DownloadError(f"{repo_id}: the Hub gave no valid size for {name}; cannot verify it", CORRUPT)
        files[name] = RemoteFile(name, size, lfs.sha256 if lfs is not None else None, s.blob_id)
    if not info.sha:
        raise DownloadError(f"{repo_id}: the Hub gave no commit for revision {revision or 'main'}")
    return info.sha, files


def file_digest(path: Path, kind: str) -> str:
    """sha256 of the content (LFS oid) or git's blob sha1 (``blob <size>\\0`` + content)."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()  # noqa: S324  (git blob ids are sha1 by definition)
    if kind == "git":
        h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, remote: RemoteFile) -> None:
    """Raise :class:`DownloadError` naming the file unless size and hash match the Hub's metadata."""
    if not path.is_file():
        raise DownloadError(f"{path}: missing after download", CORRUPT)
    size = path.stat().st_size
    if size != remote.size:
        raise DownloadError(
            f"{path}: size {size} B, the Hub says {remote.size} B (incomplete or corrupt download; run the download again)", CORRUPT
        )
    if remote.sha256:
        kind, want, label = "sha256", remote.sha256, "LFS sha256"
    elif remote.blob_id:
        kind, want, label = "git", remote.blob_id, "git blob id"
    else:
        return
    got = file_digest(path, kind)
    if got != want:
        shown = "sha256" if kind == "sha256" else "git blob id"
        raise DownloadError(
            f"{path}: {shown} {got} does not match the Hub's {label} {want} (corrupt download; it was removed, run the download again)",
            CORRUPT,
        )


def local_path(target: Path, rel: str) -> Path:
    """``target/rel`` after checking that the name is safe and that no folder on the way is a link
    or a non-folder: what the downloader writes or removes stays inside ``target``."""
    check_remote_name(rel, str(target))
    if not is_plain_name(rel):
        raise DownloadError(f"{target}: refusing to write {rel!a}, which is not a plain file name", UNSAFE_NAME)
    cur = target
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            mode = os.lstat(cur).st_mode
        except FileNotFoundError:
            break  # created by the download, below a checked folder
        if not stat.S_ISDIR(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
            raise DownloadError(
                f"{cur}: {kind} inside the snapshot folder; remove it (the downloader writes only inside {target})", UNSAFE_NAME
            )
    out = target / rel
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise DownloadError(
            f"{out}: exists and is not a regular file; remove it (the downloader writes only regular files inside {target})", UNSAFE_NAME
        )
    return out


def _read_manifest(target: Path) -> dict[str, Any]:
    """The downloader's own record, read like any untrusted file: a regular file (not a link, FIFO or
    device), at most ``MAX_JSON_BYTES``, strict JSON. Anything else is one warning and no record: every
    file is then verified again and the record is rewritten (the rename replaces whatever was there)."""
    from ..bounded import MAX_JSON_BYTES, loads_strict, read_bounded
    from ..errors import BonsaiFormatError

    path = target / MANIFEST
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return {}
    except OSError as e:
        log.warning("%s: cannot be read (%s); verifying every file again", path, e.strerror or e)
        return {}
    try:
        if stat.S_ISLNK(mode):
            raise BonsaiFormatError(path, None, "is a symbolic link; the downloader writes only regular files")
        data = loads_strict(read_bounded(path, MAX_JSON_BYTES), path)
    except BonsaiFormatError as e:
        log.warning("%s; verifying every file again", e)
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(target: Path, data: dict[str, Any]) -> None:
    from ..atomic import atomic_path

    path = target / MANIFEST
    try:
        mode: int | None = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        path.unlink()  # a link, FIFO or device in place of the downloader's own record: the link goes, never its target
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def _progress_bar_class(on_bytes: Callable[[int], None]) -> type:
    """huggingface_hub's tqdm, also reporting every chunk (negative when a resume restarts a file)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Reporting(hf_tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            if n:
                on_bytes(int(n))
            return super().update(n)

    return _Reporting


def _check_space(repo_id: str, target: Path, need: int, needed: str) -> None:
    if need <= 0:
        return
    free = shutil.disk_usage(target).free
    if free < need + SPACE_MARGIN:
        raise not_enough_space(repo_id, target, need + SPACE_MARGIN, free, needed)


def canonical_name(variant: str) -> str:
    return f"bonsai-image-{variant}-4B.safetensors"


def download(
    variant: str,
    release: str = "auto",
    models_dir: str | os.PathLike[str] | None = None,
    *,
    components: tuple[str, ...] = COMPONENTS,
    revision: str | None = None,
    to_canonical: bool = False,
    progress: ProgressFn | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    bonsai_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> DownloadResult:
    """Download (or complete) one released repo into ``<bonsai folder>/<repo-name>/`` and verify it.

    The bonsai folder is ``bonsai_dir`` when given (the Download node passes ComfyUI's registered
    folder), else the one :func:`.models_dir.resolve_models_location` picks for ``models_dir``.
    ``to_canonical`` also writes the transformer as ``<bonsai folder>/bonsai-image-<variant>-4B.safetensors``
    (outside ``diffusion_models``, where the stock loader would list a file it cannot load).
    ``endpoint`` defaults to ``$HF_ENDPOINT`` read now (a long-running ComfyUI may set it late).
    """
    from huggingface_hub import constants, hf_hub_download

    release = resolve_release(release)
    name = repo_name(variant, release)
    repo_id = f"{OWNER}/{name}"
    if bonsai_dir is not None:
        root = Path(os.path.abspath(os.path.expanduser(os.fspath(bonsai_dir))))
    else:
        root = resolve_models_location(models_dir).bonsai_dir
    target = root / name
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    endpoint_url = endpoint or constants.ENDPOINT
    needed = needed_description(release, components, variant)

    def failure(e: BaseException, what: str) -> DownloadError:
        return describe(e, repo_id=repo_id, target=target, endpoint=endpoint_url, needed=needed, what=what)

    try:
        commit, remote = remote_files(repo_id, revision=revision, endpoint=endpoint, token=token, timeout=timeout)
        files = select_files(list(remote), release, components, repo_id=repo_id)
    except UnsafeRemoteName as e:
        raise DownloadError(str(e), UNSAFE_NAME) from e
    except DownloadError:
        raise
    except Exception as e:
        raise failure(e, "listing the repository") from e
    if not files:
        raise DownloadError(f"{repo_id}@{commit[:12]} has none of the files the {release} release needs ({needed})")
    total = sum(remote[f].size for f in files)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise failure(e, f"creating {target}") from e
    manifest = _read_manifest(target)
    verified: dict[str, Any] = manifest.get("verified", {}) if manifest.get("commit") == commit else {}
    locals_ = {rel: local_path(target, rel) for rel in files}  # every path checked before the first byte is written

    def is_verified(rel: str) -> bool:
        p = locals_[rel]
        return p.is_file() and verified.get(rel) == [remote[rel].size, p.stat().st_mtime_ns]

    _check_space(repo_id, target, sum(remote[f].size for f in files if not is_verified(f)), needed)
    result = DownloadResult(repo_id, commit, target, files, total)
    done = 0
    report = progress or (lambda d, t, f: None)
    log.info("%s@%s: %d files, %.2f GB -> %s", repo_id, commit[:12], len(files), total / 1e9, target)
    for rel in files:
        rf, local = remote[rel], locals_[rel]
        if is_verified(rel):
            done += rf.size
            report(done, total, rel)
            continue
        start = done
        from_callback: list[BaseException] = []
        fetched = [0]

        def on_bytes(n: int, _rel: str = rel, _from_callback: list[BaseException] = from_callback, _fetched: list[int] = fetched) -> None:
            nonlocal done
            done += n
            _fetched[0] += n
            try:
                report(done, total, _rel)
            except BaseException as exc:  # e.g. ComfyUI's interrupt: must reach the caller unchanged
                _from_callback.append(exc)
                raise

        existed = local.is_file()
        for attempt in (0, 1):
            for resume in range(RESUMES + 1):
                try:
                    hf_hub_download(
                        repo_id,
                        rel,
                        revision=commit,
                        local_dir=target,
                        endpoint=endpoint,
                        token=token,
                        force_download=attempt > 0 and resume == 0,
                        etag_timeout=timeout,
                        tqdm_class=_progress_bar_class(on_bytes),
                    )
                    break
                except Exception as e:
                    if from_callback and e is from_callback[-1]:
                        raise
                    # Older huggingface_hub versions give up on a dropped connection; calling again
                    # resumes from the partial file with a range request.
                    if classify(e) != DROPPED or resume == RESUMES:
                        raise failure(e, f"downloading {rel}") from e
                    log.warning("%s: connection dropped (%s), resuming", rel, type(e).__name__)
                    done = start + _partial_bytes(target, rel)
            try:
                verify_file(local, rf)
                break
            except DownloadError as bad:
                local.unlink(missing_ok=True)  # never leave a bad file where a loader would pick it up
                _forget_local_metadata(target, rel)
                if attempt or not existed:
                    raise
                # a file already on disk (damaged or replaced since) that huggingface_hub trusted: fetch it once more
                log.warning("%s; downloading it again", bad)
                done = start
        done = start + rf.size
        report(done, total, rel)
        verified[rel] = [rf.size, local.stat().st_mtime_ns]
        if fetched[0]:
            result.downloaded.append(rel)
        try:
            _write_manifest(target, {"repo_id": repo_id, "commit": commit, "verified": verified})
        except OSError as e:
            raise failure(e, "writing the download record") from e
    if to_canonical:
        result.canonical = convert_to_canonical(target, root / canonical_name(variant), variant)
    return result


def _partial_bytes(target: Path, rel: str) -> int:
    """Bytes in huggingface_hub's partial file for ``rel`` (the newest ``*.incomplete`` beside its
    metadata), for the progress count after a resume."""
    folder = (target / ".cache" / "huggingface" / "download" / rel).parent
    partials = [p.stat() for p in folder.glob("*.incomplete") if p.is_file()]
    return max(partials, key=lambda st: st.st_mtime_ns).st_size if partials else 0


def _forget_local_metadata(target: Path, rel: str) -> None:
    # huggingface_hub's local-dir metadata would otherwise make the next run trust the removed file's etag
    meta = target / ".cache" / "huggingface" / "download" / (rel + ".metadata")
    meta.unlink(missing_ok=True)


def convert_to_canonical(snapshot: Path, out: Path, variant: str) -> Path:
    """The snapshot's transformer as the canonical single file ``out`` (lossless, atomic)."""
    from ..convert import convert

    return Path(convert(snapshot, out, "canonical", variant))


def register(sub: Any) -> None:
    """The ``download`` command (kept here so ``python -m bonsai_core download`` finds it)."""
    from .cli import register as _register

    _register(sub)
