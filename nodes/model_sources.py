"""What ``BonsaiModelLoader`` lists, how a listed name becomes a path, and the queue-time check.

Sources:

* canonical files (``bonsai.py convert ... --to-canonical`` or ``convert SRC OUT.safetensors``) in
  ``models/bonsai/`` -- where they belong, since the stock "Load Diffusion Model" does not look
  there -- and, for files converted before that, in ``models/diffusion_models/`` (the stock loader
  lists those too and cannot load them: the log says to move them);
* released snapshot folders (gemlite, MLX, unpacked, GGUF layouts) under ``models/bonsai/``; their
  names end with ``/`` so they never collide with file names.

Listing reads at most a safetensors header per entry (cached by fingerprint, see
:mod:`.folders`) and never raises; the full open runs at queue time (:func:`describe_problem`),
cached the same way. Not a node module: it defines no nodes.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..bonsai_core.canonical import is_canonical, load_canonical
from ..bonsai_core.checkpoint import BonsaiCheckpoint
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.formats import detect
from . import folders, installed

log = escaping_logger("bonsai_image.loader")

DIFFUSION_FOLDER = "diffusion_models"
SNAPSHOT_MARK = "/"  # combo entries for snapshot folders end with "/"
_DEPTH = 2  # <snapshot>/ or <group>/<snapshot>/ (and canonical files at those levels)
WHAT = "Bonsai model (canonical file or snapshot folder)"
FILE_KINDS = (folders.BONSAI, DIFFUSION_FOLDER)  # searched in this order for a file name
_moved_hint_logged: set[str] = set()


def _canonical_problem(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return f"{path}: not a .safetensors file"
    return None if is_canonical(path) else f"{path}: not a canonical Bonsai file"


def _snapshot_problem(path: Path) -> str | None:
    fmt, _target = detect.detect_format(path)  # raises with the reason when no transformer pack is found
    if fmt != "gemlite":
        # Safetensors and GGUF packs open from their header alone, so check them fully: a VAE or text
        # encoder folder holding a diffusers-named .safetensors is detected as "unpacked" and fails here.
        # A gemlite archive is opened at validation (its index is read from inside the zip).
        open_bonsai(path)
    return None


def _gguf_problem(path: Path) -> str | None:
    """A Bonsai GGUF (binary Q1_0 or a ternary block type) opens from its header and tensor table alone."""
    try:
        detect.open_checkpoint(path)
    except BonsaiFormatError as e:
        return str(e)
    return None


def is_canonical_file(path: Path) -> bool:
    return folders.is_ok("model-canonical", path, _canonical_problem)


def is_snapshot(path: Path) -> bool:
    return folders.is_ok("model-snapshot", path, _snapshot_problem)


def bonsai_entries() -> list[str]:
    """Canonical files, Bonsai ``.gguf`` files and snapshot folders (ending in ``/``) under every ``models/bonsai`` root."""
    out: set[str] = set()
    for root in folders.roots(folders.BONSAI):
        # models--<owner>--<repo>/snapshots/<commit>/ (Hugging Face's cache layout) counts as one level
        for e in installed.walk(root, _DEPTH, descend=lambda e: not is_snapshot(e.path)):
            if e.is_dir:
                if is_snapshot(e.path):
                    out.add(e.rel + SNAPSHOT_MARK)
            elif e.rel.endswith(".safetensors") and folders.is_ok("model-canonical", e.path, _canonical_problem):
                out.add(e.rel)
            elif e.rel.endswith(".gguf") and folders.is_ok("model-gguf", e.path, _gguf_problem):
                out.add(e.rel)
    return sorted(out)


def diffusion_models_entries() -> list[str]:
    """Canonical files in ``models/diffusion_models`` (ComfyUI's own listing of that folder, filtered)."""
    out = []
    try:
        names = folder_paths.get_filename_list(DIFFUSION_FOLDER)
    except Exception as e:  # noqa: BLE001 -- ComfyUI's walker on a broken folder must not cost the pack its nodes
        log.warning("Bonsai Image: cannot list models/%s: %s", DIFFUSION_FOLDER, e)
        return out
    for name in names:
        if not name.endswith(".safetensors"):
            continue
        full = folder_paths.get_full_path(DIFFUSION_FOLDER, name)
        if full and folders.is_ok("model-canonical", Path(full), _canonical_problem):
            out.append(name)
            if full not in _moved_hint_logged:
                _moved_hint_logged.add(full)
                log.info(
                    "Bonsai Image: %s is a Bonsai canonical file in models/%s, where the stock Load Diffusion Model lists it "
                    "but cannot load it; move it to models/bonsai/",
                    full,
                    DIFFUSION_FOLDER,
                )
    return out


def list_models() -> list[str]:
    """Every entry ``BonsaiModelLoader`` can load (a name in both places is listed once)."""
    bonsai = bonsai_entries()
    return bonsai + [n for n in diffusion_models_entries() if n not in bonsai]


def resolve_model(name: object) -> Path:
    """Full path of a combo entry: ``ValueError`` for names outside the models folders, ``FileNotFoundError`` when absent.

    One name rule for every loader: a snapshot folder may be named with or without its trailing ``/``."""
    if isinstance(name, str) and name.endswith(SNAPSHOT_MARK):
        return folders.locate((folders.BONSAI,), name, WHAT, want_dir=True)
    try:
        return folders.locate(FILE_KINDS, name, WHAT, want_dir=False)
    except FileNotFoundError:
        folder = folders.find((folders.BONSAI,), str(name), want_dir=True)  # the name passed the guard above
        if folder is None:
            raise
        return folder


def open_bonsai(path: str | Path) -> BonsaiCheckpoint:
    """A lazily read Bonsai checkpoint (BFL names, canonical codes) from a canonical file or a snapshot."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return detect.open_checkpoint(path)  # a Bonsai GGUF: read like the released layouts, exactly
    if path.is_file():
        # one open, one header parse: load_canonical refuses a non-canonical file with the precise reason
        return load_canonical(path)
    return detect.open_checkpoint(path)


def _open_problem(path: Path) -> str | None:
    try:
        open_bonsai(path)
    except BonsaiFormatError as e:
        return f"{e}{_convert_hint(path)}"
    return None


def describe_problem(path: Path) -> str | None:
    """Queue-time check: None when the checkpoint opens, else one line (cached per fingerprint)."""
    return folders.check("model-open", path, _open_problem)


def _convert_hint(path: Path) -> str:
    if path.is_file():
        return (
            ". Bonsai Load Model reads canonical files and Bonsai GGUF files: convert a release with "
            f"`python custom_nodes/{folders.PACK_DIR}/bonsai.py convert SRC models/bonsai/NAME.safetensors`, "
            "or load a dense model with the stock Load Diffusion Model node"
        )
    return ""


def validation_problem(name: object) -> str | None:
    """The one-line reason a literal ``model_name`` cannot load (refused, missing, unreadable), or None.

    A missing name says what to do next (resume an interrupted download, pick an installed entry, move
    a misplaced release); an unreadable snapshot says "run the same download again" when it was interrupted."""
    try:
        path = resolve_model(name)
    except ValueError as e:
        return str(e)
    except FileNotFoundError as e:
        return installed.not_found(str(e), name, (folders.BONSAI,), list_models())
    problem = describe_problem(path)
    return installed.with_resume(problem, path) if problem is not None else None


def source_fingerprint(path: Path) -> tuple[object, ...]:
    """Changes whenever the bytes ComfyUI would load change (the file, or a snapshot's files)."""
    return folders.fingerprint(path)
