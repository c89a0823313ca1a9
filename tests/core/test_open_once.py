"""Open once: loading a checkpoint opens each safetensors file and parses its header exactly
once -- detection, validation and every tensor read share one reader. Issue 10, item 4."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import bonsai_core.safetensors_io as st_io
from bonsai_core.canonical import load_canonical
from bonsai_core.formats import open_checkpoint
from bonsai_core.packing import PackedWeight


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
