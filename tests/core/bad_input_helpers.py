"""Helpers shared by the bad-input tests (test_core_bad_input.py, test_core_bad_values.py): open a
broken copy of a tiny fixture and check that it fails with one BonsaiFormatError naming file and tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.safetensors_io import SafetensorsReader, TensorSpec, write_safetensors

QKV = "transformer_blocks.0.attn.to_q"  # first quantized diffusers linear


def raises_format_error(path: Path | str, tensor: str | None = None, match: str = "", variant: str | None = None) -> BonsaiFormatError:
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(path, variant)
    err = ei.value
    assert str(path) in err.path or Path(err.path).resolve().is_relative_to(Path(path).resolve()), (err.path, path)
    if tensor is not None:
        assert err.tensor == tensor, str(err)
        assert f"'{tensor}'" in str(err)
    if match:
        assert match in str(err), str(err)
    return err


def copy_fixture(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def gemlite_copy(tiny: dict, tmp_path: Path, variant: str = "ternary") -> tuple[Path, Path]:
    root = copy_fixture(tiny[(variant, "gemlite")], tmp_path / "snap")
    pack = root / f"transformer-gemlite-int{1 if variant == 'binary' else 2}"
    return root, pack


def rewrite_state(pack: Path, edit) -> None:  # type: ignore[no-untyped-def]
    sd = {k: v.clone() for k, v in load_state_dict(pack / "state_dict.pt").items()}  # clone: the file is mmapped
    edit(sd)
    torch.save(sd, pack / "state_dict.pt")


def rewrite_safetensors(path: Path, edit, metadata: dict | None = None) -> None:  # type: ignore[no-untyped-def]
    r = SafetensorsReader(path)
    tensors = {k: r.get(k).clone() for k in r.keys()}
    md = dict(r.metadata) if metadata is None else metadata
    edit(tensors)
    write_safetensors(path, [TensorSpec(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()], md)
