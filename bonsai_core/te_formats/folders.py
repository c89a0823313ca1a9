"""Where a text encoder lives: a released snapshot root or the TE folder itself, its layout and tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BonsaiFormatError
from .hqq import HQQ_FILE, read_hqq
from .mlx import MLX_FILE, read_te_mlx
from .packed import TEWeights

TE_FOLDER_NAMES = ("text_encoder-hqq-4bit", "text_encoder-mlx-4bit")


def te_layout(folder: str | os.PathLike[str]) -> str | None:
    folder = Path(folder)
    if (folder / HQQ_FILE).is_file():
        return "hqq"
    if (folder / MLX_FILE).is_file() or (folder / (MLX_FILE + ".index.json")).is_file():
        return "mlx"
    return None


def resolve_te_folder(path: str | os.PathLike[str]) -> Path:
    """A released snapshot root (holding ``text_encoder-*-4bit/``) or the TE folder itself."""
    path = Path(path)
    if te_layout(path):
        return path
    for name in TE_FOLDER_NAMES:
        if te_layout(path / name):
            return path / name
    found = sorted(p for p in path.glob("text_encoder*") if p.is_dir() and te_layout(p)) if path.is_dir() else []
    if found:
        return found[0]
    raise BonsaiFormatError(
        path,
        None,
        f"no 4-bit text encoder here: expected {HQQ_FILE} or {MLX_FILE} (+ config.json), or a {'/'.join(TE_FOLDER_NAMES)} subfolder",
    )


def read_te(path: str | os.PathLike[str]) -> TEWeights:
    folder = resolve_te_folder(path)
    return read_hqq(folder) if te_layout(folder) == "hqq" else read_te_mlx(folder)


def find_tokenizer_dir(te_folder: str | os.PathLike[str]) -> Path | None:
    """The tokenizer shipped with a TE: ``<te>/tokenizer/`` (HQQ), files in ``<te>/`` (MLX) or ``<snapshot>/tokenizer/``."""
    te_folder = Path(te_folder)
    for cand in (te_folder / "tokenizer", te_folder, te_folder.parent / "tokenizer"):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.json").is_file():
            return cand
    return None
