"""The one guard for model names typed into (or posted to) loader nodes.

Loader inputs are names relative to a models folder (``models/diffusion_models``, ``models/bonsai``).
The nodes replace ComfyUI's "value not in list" check with their own ``validate_inputs``, so a name
that is an absolute path or climbs out with ``..`` must be refused here: joined to a models root it
would reach any file or folder on the machine. Not a node module (the pack skips ``_`` modules).
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


def escapes_models_folder(name: str) -> bool:
    """True for an absolute path (POSIX or Windows, drive or UNC) or a name with a ``..`` part."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or bool(windows.drive) or windows.root != "" or ".." in posix.parts or ".." in windows.parts


def name_problem(name: str, what: str, folder: str) -> str | None:
    """A readable refusal when ``name`` is not a plain name under ``folder``, else None."""
    if escapes_models_folder(name):
        return f"{name!r}: not a {what} name under {folder} (absolute paths and '..' are refused)"
    return None
