"""Open once: loading a checkpoint opens each safetensors file and parses its header exactly
once -- detection, validation and every tensor read share one reader (issue 10, item 4); GGUF and
``torch.save`` archives are read from the descriptor opened and checked, so replacing the file
while it loads changes nothing and a FIFO swapped in cannot hang the load (issue 18, item 7)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import bonsai_core.safetensors_io as st_io
import bonsai_core.torch_archive as torch_archive
from bonsai_core.canonical import load_canonical
from bonsai_core.formats import open_checkpoint
from bonsai_core.packing import PackedWeight
from bonsai_tools.synth import make_fixture


@pytest.fixture
def header_parses(monkeypatch: pytest.MonkeyPatch) -> Counter:
    seen: Counter = Counter()
    real = st_io.parse_header

    def counting(path: Path, f):  # noqa: ANN001, ANN202
        seen[Path(path).name] += 1
        return real(path, f)

    monkeypatch.setattr(st_io, "parse_header", counting)
    return seen


@pytest.mark.parametrize("fmt", ["canonical", "mlx", "unpacked"])
def test_open_and_read_everything_parses_each_header_once(tiny: dict, fmt: str, header_parses: Counter) -> None:
    ckpt = open_checkpoint(tiny[("ternary", fmt)])
    for _key, value in ckpt.items():
        assert isinstance(value, PackedWeight) or value.is_floating_point()
    assert header_parses and set(header_parses.values()) == {1}, header_parses


def test_load_canonical_parses_the_header_once(tiny: dict, header_parses: Counter) -> None:
    ckpt = load_canonical(tiny[("binary", "canonical")])
    for key in ckpt.packed_shapes:
        ckpt.load_packed(key)
    assert list(header_parses.values()) == [1]


# --- a file replaced while it loads (issue 18, item 7) ------------------------------------------


def _all_tensors(ckpt) -> dict:  # noqa: ANN001
    return {k: (v.codes, v.scales) if isinstance(v, PackedWeight) else v for k, v in ckpt.items()}


def _same(a: dict, b: dict) -> bool:
    flat = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    return a.keys() == b.keys() and all(all(torch.equal(x, y) for x, y in zip(flat(a[k]), flat(b[k]))) for k in a)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("swap_to", ["other-model", "fifo"])
def test_gguf_replaced_after_open_is_read_from_the_file_opened(tiny: dict, tmp_path: Path, swap_to: str) -> None:
    """Before: every tensor was read by reopening the path -- another model's weights were mixed in,
    or the load hung on a FIFO."""
    path = tmp_path / "model.gguf"
    shutil.copy(tiny[("binary", "gguf")], path)
    want = _all_tensors(open_checkpoint(tiny[("binary", "gguf")]))
    ckpt = open_checkpoint(path)
    if swap_to == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        make_fixture("binary", "tiny", "gguf", 99, tmp_path / "other.gguf")
        os.replace(tmp_path / "other.gguf", path)
    assert _same(_all_tensors(ckpt), want)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("swap_to", ["other-model", "fifo"])
def test_pt_replaced_between_check_and_load_is_read_from_the_file_checked(
    tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap_to: str
) -> None:
    """The archive is checked, then torch.load runs: the file is replaced right before torch.load
    opens it. Before: torch.load reopened the name (another pack's weights, or a hang on a FIFO)."""
    root = tmp_path / "snap"
    shutil.copytree(tiny[("ternary", "gemlite")], root)
    sd = root / "transformer-gemlite-int2" / "state_dict.pt"
    other = make_fixture("ternary", "tiny", "gemlite", 99, tmp_path / "other") / "state_dict.pt"
    want = _all_tensors(open_checkpoint(tiny[("ternary", "gemlite")]))
    real_load = torch_archive.torch.load

    def swap_then_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if sd.exists() and not sd.is_fifo():
            if swap_to == "fifo":
                sd.unlink()
                os.mkfifo(sd)
            else:
                os.replace(other, sd)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch_archive.torch, "load", swap_then_load)
    try:
        got = _all_tensors(open_checkpoint(root / "transformer-gemlite-int2"))
    finally:
        monkeypatch.undo()
    assert _same(got, want)
