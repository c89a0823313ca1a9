"""``bonsai.py download`` / ``python -m bonsai_core download``: the command line of :mod:`.download`.

The models folder is chosen by :func:`.models_dir.resolve_models_location` (the ComfyUI the pack is
installed in first) and printed before anything is written.
"""

from __future__ import annotations

import argparse
import sys

from ..escape import escape_name
from . import DEFAULT_TIMEOUT_S, DownloadError, download
from .hub_names import AUTO_RELEASE, COMPONENTS, OWNER, RELEASES, VARIANT_BITS, repo_name, resolve_release
from .models_dir import ModelsDirError, resolve_models_location

EXIT_FAILED = 3  # download failed (offline, not found, disk full, ...): the message says what to do


def _cli_progress() -> object:
    state = {"pct": -1}

    def report(done: int, total: int, name: str) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != state["pct"]:
            state["pct"] = pct
            sys.stderr.write(f"\r{pct:3d}%  {done / 1e9:7.3f} / {total / 1e9:.3f} GB  {escape_name(name)[-60:]:<60}")
            sys.stderr.flush()

    return report


def cmd_download(args: argparse.Namespace) -> int:
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        sys.stderr.write(f"error: unknown component(s) {bad}; choose from {','.join(COMPONENTS)}\n")
        return 2
    try:
        where = resolve_models_location(args.models_dir)
    except ModelsDirError as e:
        sys.stderr.write(f"error: {escape_name(e)}\n")
        return 2
    release = resolve_release(args.release)
    name = repo_name(args.variant, release)
    # Said before any byte is written, so a wrong ComfyUI can be stopped with Ctrl-C.
    print(f"Downloading {OWNER}/{name} into {escape_name(where.bonsai_dir / name)}", flush=True)
    print(f"  models folder: {escape_name(where.describe())}", flush=True)
    try:
        res = download(
            args.variant,
            release,
            components=components,
            revision=args.revision,
            to_canonical=args.to_canonical,
            progress=None if args.quiet else _cli_progress(),  # type: ignore[arg-type]
            bonsai_dir=where.bonsai_dir,
            timeout=args.timeout,
        )
    except DownloadError as e:
        sys.stderr.write(f"\nerror: {escape_name(e)}\n")
        return EXIT_FAILED
    if not args.quiet:
        sys.stderr.write("\n")
    print(
        f"{res.repo_id}@{res.commit[:12]}: {len(res.files)} files verified ({res.total_bytes / 1e9:.3f} GB, "
        f"{len(res.downloaded)} downloaded now) in {escape_name(res.local_dir)}"
    )
    if res.canonical is not None:
        print(f"canonical transformer: {escape_name(res.canonical)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a released Bonsai Image 4B repo into ComfyUI's models/bonsai/ (verified)",
        description=(
            "Downloads prism-ml/bonsai-image-<variant>-4B-<release> into <models>/bonsai/<repo>/. Without --models-dir the "
            "models folder is that of the ComfyUI this pack is installed in (custom_nodes/<pack>/..; its "
            "extra_model_paths.yaml 'bonsai:' entry is honoured), else $COMFYUI_PATH, else ~/comfy/ComfyUI."
        ),
    )
    p.add_argument("variant", choices=sorted(VARIANT_BITS), help="binary (1-bit) or ternary (2-bit)")
    p.add_argument(
        "--release",
        "--backend",  # the old name of this option
        dest="release",
        choices=("auto", *RELEASES),
        default="auto",
        help=f"which release repo: auto = {AUTO_RELEASE} (what the shipped workflows load, on every device)",
    )
    p.add_argument(
        "--models-dir",
        default=None,
        help="a ComfyUI models folder (relative to the current folder); files go to <models-dir>/bonsai/<repo>/",
    )
    p.add_argument("--components", default=",".join(COMPONENTS), help="comma list of transformer,text_encoder,vae")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument(
        "--to-canonical",
        action="store_true",
        help="also write <models>/bonsai/bonsai-image-<variant>-4B.safetensors (the single-file form the Bonsai loader lists)",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds without an answer before the Hub counts as stalled")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_download)
