"""One registry of layouts: the CLI, conversion and detection all read bonsai_core.formats.FORMATS,
and no other runtime module spells the list out again. Issue 10, item 3."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from bonsai_core import cli_formats
from bonsai_core.checkpoint import BonsaiCheckpoint
from bonsai_core.formats import FORMAT_NAMES, FORMATS, get_format

ROOT = Path(__file__).resolve().parents[2]


def test_cli_choices_are_the_registry() -> None:
    parser = argparse.ArgumentParser()
    cli_formats.register(parser.add_subparsers())
    convert = parser._subparsers._group_actions[0].choices["convert"]  # type: ignore[union-attr]
    to = next(a for a in convert._actions if a.dest == "to")
    assert tuple(to.choices) == FORMAT_NAMES


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_entry_resolves_its_reader_and_writer(name: str) -> None:
    fmt = FORMATS[name]
    assert callable(fmt._resolve(fmt.reader)) and callable(fmt._resolve(fmt.writer))
    assert fmt.variants and all(v in ("binary", "ternary") for v in fmt.variants)


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="canonical, gemlite, mlx, unpacked, gguf"):
        get_format("safetensors")


def test_no_second_list_of_formats_in_the_runtime() -> None:
    """A tuple/list/set literal naming four or more layouts outside the registry is a copy of it.
    (The Hub's three release flavours -- gemlite, mlx, unpacked -- are a different fact.)"""
    names = set(FORMAT_NAMES)
    offenders = []
    for path in sorted((ROOT / "bonsai_core").rglob("*.py")):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                consts = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(consts & names) >= 4:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_writer_refuses_a_variant_the_layout_cannot_hold(tiny: dict, tmp_path: Path) -> None:
    from bonsai_core.convert import write_checkpoint
    from bonsai_core.errors import BonsaiFormatError
    from bonsai_core.formats import open_checkpoint

    ckpt: BonsaiCheckpoint = open_checkpoint(tiny[("ternary", "canonical")])
    for name in FORMAT_NAMES:
        if not FORMATS[name].holds("ternary"):
            with pytest.raises(BonsaiFormatError, match="weights only; this checkpoint is ternary"):
                write_checkpoint(ckpt, tmp_path / f"x.{name}", name)
            assert not (tmp_path / f"x.{name}").exists()
