"""``python -m bonsai_core download``: fetch a released Bonsai Image 4B repo into ComfyUI's models folders.

Repos are ``prism-ml/bonsai-image-{binary,ternary}-4B-{unpacked,gemlite-Nbit,mlx-Nbit}`` (binary =
1 bit, ternary = 2 bit). A snapshot lands in ``<models-dir>/bonsai/<repo-name>/`` with its folder
structure, only the files the chosen backend needs. Transfers are huggingface_hub's
(``hf_hub_download`` into a local dir, one file at a time at one pinned commit): files already
complete are skipped, and a dropped connection is resumed with an HTTP range request. Every file
is then checked against the Hub's metadata: its size, and the LFS sha256 (large files) or the git
blob id (small files). Nothing is ever pip-installed.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OWNER = "prism-ml"
VARIANT_BITS = {"binary": 1, "ternary": 2}
BACKENDS = ("gemlite", "mlx", "unpacked")
COMPONENTS = ("transformer", "text_encoder", "vae")
MANIFEST = ".bonsai-download.json"  # verified files of a snapshot: skip re-hashing on the next run

# What each backend's pipeline reads, by component (fnmatch: "*" also matches "/").
_PATTERNS: dict[str, dict[str, list[str]]] = {
    "gemlite": {"transformer": ["transformer-gemlite-*/*"], "text_encoder": ["text_encoder-hqq-4bit/*"]},
    "mlx": {"transformer": ["transformer-packed-mflux/*"], "text_encoder": ["text_encoder-mlx-4bit/*", "tokenizer/*"]},
    "unpacked": {"transformer": ["transformer/*"], "text_encoder": ["text_encoder/*", "tokenizer/*"]},
}
_COMMON = ["*.json", "README.md", "scheduler/*"]  # top-level manifests/configs (nested *.json of skipped components are dropped below)
_VAE = ["vae/*"]
ProgressFn = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


class DownloadError(RuntimeError):
    """A download that cannot complete; the message says what to do."""


def repo_name(variant: str, backend: str) -> str:
    if variant not in VARIANT_BITS:
        raise ValueError(f"variant must be one of {sorted(VARIANT_BITS)}, got {variant!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    suffix = "unpacked" if backend == "unpacked" else f"{backend}-{VARIANT_BITS[variant]}bit"
    return f"bonsai-image-{variant}-4B-{suffix}"


def auto_backend() -> str:
    """gemlite on CUDA, mlx on Apple silicon, unpacked (bf16, the torch fallback's source) otherwise."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mlx"
    try:
        import torch

        if torch.cuda.is_available() and torch.version.cuda is not None:
            return "gemlite"
    except ImportError:
        pass
    return "unpacked"


def allow_patterns(backend: str, components: tuple[str, ...] = COMPONENTS) -> list[str]:
    pats = list(_COMMON)
    for comp in components:
        pats += _VAE if comp == "vae" else _PATTERNS[backend][comp]
    return pats


def select_files(names: list[str], backend: str, components: tuple[str, ...] = COMPONENTS) -> list[str]:
    """Repo files the backend needs: matching its component patterns; ``assets/`` and the other
    backends' / skipped components' folders never."""
    wanted = allow_patterns(backend, components)
    component_dirs = {p.split("/", 1)[0] for comps in _PATTERNS.values() for pats in comps.values() for p in pats if "/" in p} | {"vae"}
    chosen_dirs = {p.split("/", 1)[0] for p in wanted if "/" in p}
    out = []
    for n in names:
        top = n.split("/", 1)[0] if "/" in n else None
        if top == "assets":
            continue
        if (
            top is not None
            and any(fnmatch.fnmatch(top, d) for d in component_dirs)
            and not any(fnmatch.fnmatch(top, d) for d in chosen_dirs)
        ):
            continue
        if any(fnmatch.fnmatch(n, p) for p in wanted):
            out.append(n)
    return sorted(out)


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


def _offline_message(repo_id: str, target: Path, need: list[str], error: BaseException, endpoint: str) -> str:
    need_text = ", ".join(need)
    return (
        f"Cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}). "
        f"To install by hand, download https://huggingface.co/{repo_id} (keeping its folder structure) into {target}{os.sep} "
        f"- needed: {need_text}. Then load it with the Bonsai loader nodes; no network is needed after that."
    )


def _is_network_error(e: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled | ConnectionError | TimeoutError):
        return True
    # huggingface_hub's HTTP client (httpx or its fork) raises its own connect/timeout types
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "ProxyError"})


def remote_files(
    repo_id: str, *, revision: str | None, endpoint: str | None, token: str | bool | None
) -> tuple[str, dict[str, RemoteFile]]:
    """(commit, files) from the Hub's repo info with file metadata (sizes, LFS sha256, blob ids)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    files = {}
    for s in info.siblings or []:
        lfs = s.lfs
        size = lfs.size if lfs is not None else s.size
        if size is None:
            raise DownloadError(f"{repo_id}: the Hub gave no size for {s.rfilename}; cannot verify it")
        files[s.rfilename] = RemoteFile(s.rfilename, int(size), lfs.sha256 if lfs is not None else None, s.blob_id)
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
        raise DownloadError(f"{path}: missing after download")
    size = path.stat().st_size
    if size != remote.size:
        raise DownloadError(f"{path}: size {size} B, the Hub says {remote.size} B (incomplete or corrupt download; run the download again)")
    if remote.sha256:
        got = file_digest(path, "sha256")
        if got != remote.sha256:
            raise DownloadError(
                f"{path}: sha256 {got} does not match the Hub's LFS sha256 {remote.sha256} (corrupt download; it was removed, run the download again)"
            )
    elif remote.blob_id:
        got = file_digest(path, "git")
        if got != remote.blob_id:
            raise DownloadError(
                f"{path}: git blob id {got} does not match the Hub's {remote.blob_id} (corrupt download; it was removed, run the download again)"
            )


def _read_manifest(target: Path) -> dict[str, Any]:
    try:
        data = json.loads((target / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_manifest(target: Path, data: dict[str, Any]) -> None:
    from .atomic import atomic_path

    with atomic_path(target / MANIFEST) as tmp:
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


def download(
    variant: str,
    backend: str = "auto",
    models_dir: str | os.PathLike[str] = ".",
    *,
    components: tuple[str, ...] = COMPONENTS,
    revision: str | None = None,
    to_canonical: bool = False,
    progress: ProgressFn | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    bonsai_dir: str | os.PathLike[str] | None = None,
    diffusion_models_dir: str | os.PathLike[str] | None = None,
) -> DownloadResult:
    """Download (or complete) one released repo into ``<models_dir>/bonsai/<repo-name>/`` and verify it.

    ``bonsai_dir``/``diffusion_models_dir`` override ``<models_dir>/bonsai`` and
    ``<models_dir>/diffusion_models`` (ComfyUI passes its registered folders). ``endpoint`` defaults
    to ``$HF_ENDPOINT`` read now (a long-running ComfyUI may set it after importing huggingface_hub).
    """
    from huggingface_hub import constants, hf_hub_download

    backend = auto_backend() if backend == "auto" else backend
    name = repo_name(variant, backend)
    repo_id = f"{OWNER}/{name}"
    models = Path(models_dir).expanduser().resolve()
    target = (Path(bonsai_dir).expanduser().resolve() if bonsai_dir else models / "bonsai") / name
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    endpoint_url = endpoint or constants.ENDPOINT
    try:
        commit, remote = remote_files(repo_id, revision=revision, endpoint=endpoint, token=token)
    except DownloadError:
        raise
    except Exception as e:
        if _is_network_error(e):
            raise DownloadError(_offline_message(repo_id, target, allow_patterns(backend, components), e, endpoint_url)) from e
        raise DownloadError(f"{repo_id}: cannot list the repository: {type(e).__name__}: {e}") from e
    files = select_files(list(remote), backend, components)
    if not files:
        raise DownloadError(
            f"{repo_id}@{commit[:12]} has none of the files the {backend} backend needs ({', '.join(allow_patterns(backend, components))})"
        )
    total = sum(remote[f].size for f in files)
    target.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(target)
    verified: dict[str, Any] = manifest.get("verified", {}) if manifest.get("commit") == commit else {}
    result = DownloadResult(repo_id, commit, target, files, total)
    done = 0
    report = progress or (lambda d, t, f: None)
    log.info("%s@%s: %d files, %.2f GB -> %s", repo_id, commit[:12], len(files), total / 1e9, target)
    for rel in files:
        rf, local = remote[rel], target / rel
        stamp = [rf.size, local.stat().st_mtime_ns] if local.is_file() else None
        if stamp is not None and verified.get(rel) == stamp:
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
            try:
                hf_hub_download(
                    repo_id,
                    rel,
                    revision=commit,
                    local_dir=target,
                    endpoint=endpoint,
                    token=token,
                    force_download=attempt > 0,
                    tqdm_class=_progress_bar_class(on_bytes),
                )
            except Exception as e:
                if from_callback and e is from_callback[-1]:
                    raise
                if _is_network_error(e):
                    raise DownloadError(_offline_message(repo_id, target, files, e, endpoint_url)) from e
                raise DownloadError(f"{repo_id}: downloading {rel} failed: {type(e).__name__}: {e}") from e
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
        _write_manifest(target, {"repo_id": repo_id, "commit": commit, "verified": verified})
    if to_canonical:
        out_dir = Path(diffusion_models_dir).expanduser().resolve() if diffusion_models_dir else models / "diffusion_models"
        result.canonical = convert_to_canonical(target, out_dir / canonical_name(variant), variant)
    return result


def _forget_local_metadata(target: Path, rel: str) -> None:
    # huggingface_hub's local-dir metadata would otherwise make the next run trust the removed file's etag
    meta = target / ".cache" / "huggingface" / "download" / (rel + ".metadata")
    meta.unlink(missing_ok=True)


def canonical_name(variant: str) -> str:
    return f"bonsai-image-{variant}-4B.safetensors"


def convert_to_canonical(snapshot: Path, out: Path, variant: str) -> Path:
    """The snapshot's transformer as the canonical single file ``out`` (lossless, atomic)."""
    from .convert import convert

    return Path(convert(snapshot, out, "canonical", variant))


# ----------------------------------------------------------------------------- CLI


def _cli_progress() -> ProgressFn:
    state = {"pct": -1}

    def report(done: int, total: int, name: str) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != state["pct"]:
            state["pct"] = pct
            sys.stderr.write(f"\r{pct:3d}%  {done / 1e9:7.3f} / {total / 1e9:.3f} GB  {name[-60:]:<60}")
            sys.stderr.flush()

    return report


def cmd_download(args: argparse.Namespace) -> int:
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        sys.stderr.write(f"unknown component(s) {bad}; choose from {','.join(COMPONENTS)}\n")
        return 2
    try:
        res = download(
            args.variant,
            args.backend,
            args.models_dir,
            components=components,
            revision=args.revision,
            to_canonical=args.to_canonical,
            progress=None if args.quiet else _cli_progress(),
        )
    except DownloadError as e:
        sys.stderr.write(f"\nerror: {e}\n")
        return 3
    if not args.quiet:
        sys.stderr.write("\n")
    print(
        f"{res.repo_id}@{res.commit[:12]}: {len(res.files)} files verified ({res.total_bytes / 1e9:.3f} GB, {len(res.downloaded)} downloaded now) in {res.local_dir}"
    )
    if res.canonical is not None:
        print(f"canonical transformer: {res.canonical}")
    return 0


def default_models_dir() -> str:
    """``$COMFYUI_PATH/models`` or ``~/comfy/ComfyUI/models`` when present, else ``./models``."""
    for cand in (os.environ.get("COMFYUI_PATH"), "~/comfy/ComfyUI"):
        if cand and (Path(cand).expanduser() / "models").is_dir():
            return str(Path(cand).expanduser() / "models")
    return "models"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a released Bonsai Image 4B repo into ComfyUI's models folders (verified)")
    p.add_argument("variant", choices=sorted(VARIANT_BITS), help="binary (1-bit) or ternary (2-bit)")
    p.add_argument(
        "--backend", choices=("auto", *BACKENDS), default="auto", help="auto: gemlite on CUDA, mlx on Apple silicon, unpacked otherwise"
    )
    p.add_argument("--models-dir", default=default_models_dir(), help="ComfyUI's models folder (files go to <models-dir>/bonsai/<repo>/)")
    p.add_argument("--components", default=",".join(COMPONENTS), help="comma list of transformer,text_encoder,vae")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument(
        "--to-canonical", action="store_true", help="also write <models-dir>/diffusion_models/bonsai-image-<variant>-4B.safetensors"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_download)
