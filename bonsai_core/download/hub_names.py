"""Names on the Hugging Face Hub: release repos, the files each release needs, and the safety check
every remote file name passes before the downloader turns it into a local path.

Repos are ``prism-ml/bonsai-image-{binary,ternary}-4B-{unpacked,gemlite-Nbit,mlx-Nbit}`` (binary =
1 bit, ternary = 2 bit). A name the Hub lists is only ever joined to a local folder after
:func:`check_remote_name` accepted it: huggingface_hub versions differ in what they refuse, so the
pack never relies on them to keep writes inside the target folder.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import BonsaiFormatError
from ..klein import VARIANT_BITS

OWNER = "prism-ml"
RELEASES = ("gemlite", "mlx", "unpacked")
COMPONENTS = ("transformer", "text_encoder", "vae")
# auto = gemlite everywhere: every shipped workflow points at the gemlite folders, and the pack
# unpacks them on any device (CUDA kernels where present, the torch path on CPU and Apple).
AUTO_RELEASE = "gemlite"
MANIFEST = ".bonsai-download.json"  # the downloader's own record inside a snapshot folder

# Folder (first path part) of each component, per release. Everything below such a folder is
# the component's (tokenizers sit inside text-encoder folders in some releases).
_COMPONENT_DIRS: dict[str, dict[str, tuple[str, ...]]] = {
    "gemlite": {"transformer": (r"transformer-gemlite-int[12]",), "text_encoder": (r"text_encoder-hqq-4bit",), "vae": ("vae",)},
    "mlx": {"transformer": ("transformer-packed-mflux",), "text_encoder": ("text_encoder-mlx-4bit", "tokenizer"), "vae": ("vae",)},
    "unpacked": {"transformer": ("transformer",), "text_encoder": ("text_encoder", "tokenizer"), "vae": ("vae",)},
}
_ALWAYS_DIRS = ("scheduler",)  # small configs every release may carry
_TOP_FILES = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.json|README\.md")  # top-level manifests and the card

# What a path part may look like: letters, digits and ._+- , not starting with a dot (no hidden
# files, no "." / ".."), not ending with a dot or space (Windows drops those silently).
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(?<![. ])")
_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)
MAX_NAME_CHARS = 255  # a whole relative name
MAX_PART_CHARS = 128  # one folder or file name
MAX_DEPTH = 5  # component/sub/sub/sub/file: released trees are at most 3 deep


class UnsafeRemoteName(BonsaiFormatError):
    """A file name listed by the Hub that could leave the target folder (or is not a plain name)."""


def repo_name(variant: str, release: str) -> str:
    """``bonsai-image-<variant>-4B-<release suffix>`` (the repo name without the owner)."""
    if variant not in VARIANT_BITS:
        raise ValueError(f"variant must be one of {sorted(VARIANT_BITS)}, got {variant!r}")
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES} (or auto), got {release!r}")
    suffix = "unpacked" if release == "unpacked" else f"{release}-{VARIANT_BITS[variant]}bit"
    return f"bonsai-image-{variant}-4B-{suffix}"


def resolve_release(release: str) -> str:
    """``auto`` -> :data:`AUTO_RELEASE`; a named release unchanged (checked)."""
    if release == "auto":
        return AUTO_RELEASE
    if release not in RELEASES:
        raise ValueError(f"release must be one of auto, {', '.join(RELEASES)}; got {release!r}")
    return release


def check_remote_name(name: object, repo_id: str) -> str:
    """``name`` unchanged if it is a relative POSIX path that stays inside any folder it is joined
    to (on POSIX and Windows); else :class:`UnsafeRemoteName` naming the repo and the escaped name.

    Refused (the whole listing is then refused): non-strings, empty names, absolute, drive and UNC
    paths, ``:`` (drives, NTFS streams), backslashes, NUL and other control or format characters,
    empty / ``.`` / ``..`` parts (also ``.. `` and ``...``, which Windows reads as such), names longer than :data:`MAX_NAME_CHARS` or deeper than :data:`MAX_DEPTH`.
    A safe name may still be one the release never uses; :func:`expected_for` decides that.
    """
    shown = ascii(name)[:120]
    if not isinstance(name, str):
        raise UnsafeRemoteName(repo_id, None, f"the Hub listed a file name that is not a string: {shown}")

    def bad(why: str) -> UnsafeRemoteName:
        return UnsafeRemoteName(repo_id, None, f"the Hub listed an unsafe file name {shown}: {why}; nothing was downloaded")

    if not name:
        raise bad("empty")
    if len(name) > MAX_NAME_CHARS:
        raise bad(f"longer than {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise bad("contains NUL, control or format characters")
    if "\\" in name:
        raise bad("contains a backslash")
    if name.startswith("/"):
        raise bad("absolute path")
    if ":" in name:
        raise bad("contains ':' (a drive letter or a Windows file stream)")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise bad(f"more than {MAX_DEPTH} levels deep")
    for part in parts:
        # Windows drops trailing dots and spaces, so ".. " or "..." would mean a parent folder there.
        if part.rstrip(". ") == "":
            raise bad(f"path part {part!r} (empty, or only dots and spaces: '.' / '..')")
        if len(part) > MAX_PART_CHARS:
            raise bad(f"a part longer than {MAX_PART_CHARS} characters")
    return name


def is_plain_name(name: str) -> bool:
    """Every part is a plain ASCII file name (letters, digits, ``._+-``), not hidden, not ending in a
    dot or space, not a Windows device name: the only names the downloader ever writes."""
    return name.isascii() and all(_PART.fullmatch(p) and not _WINDOWS_RESERVED.fullmatch(p) for p in name.split("/"))


def _dir_matches(top: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, top) for p in patterns)


def expected_for(name: str, release: str, components: tuple[str, ...] = COMPONENTS) -> bool:
    """Whether a (safe) repo file belongs to ``release`` with ``components``: top-level ``*.json``
    and ``README.md``, ``scheduler/*``, and files under the chosen components' folders, all with
    plain names (:func:`is_plain_name`). Other releases' folders, ``assets/`` and anything unknown
    are never downloaded."""
    if not is_plain_name(name):
        return False  # hidden files (.gitattributes, the downloader's own records), odd characters
    top, sep, _rest = name.partition("/")
    if not sep:
        return bool(_TOP_FILES.fullmatch(name)) and name != MANIFEST
    if top in _ALWAYS_DIRS:
        return True
    dirs = _COMPONENT_DIRS[release]
    return any(_dir_matches(top, dirs[c]) for c in components)


def select_files(names: list[str], release: str, components: tuple[str, ...] = COMPONENTS, *, repo_id: str = "") -> list[str]:
    """The repo files ``release`` needs, sorted. Every name is checked first: one unsafe name
    refuses the whole listing (:class:`UnsafeRemoteName`), so nothing of a hostile repo is written."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    for n in names:
        check_remote_name(n, repo_id or f"{OWNER}/<{release}>")
    return sorted(n for n in names if expected_for(n, release, components))


def needed_description(release: str, components: tuple[str, ...] = COMPONENTS, variant: str | None = None) -> str:
    """The folders a manual install needs, in words (for error messages)."""
    bits = str(VARIANT_BITS[variant]) if variant in VARIANT_BITS else "<bits>"
    dirs = _COMPONENT_DIRS[release]
    shown = [d.replace("int[12]", f"int{bits}") + "/" for c in components for d in dirs[c]]
    return ", ".join(["the top-level *.json files", "scheduler/ (if present)", *shown])
