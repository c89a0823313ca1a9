"""Names and metadata from files reach the terminal and the log escaped (one function: escape_name).

Before: ``inspect`` printed a checkpoint's ``source_repo`` metadata and the file name raw, so an ESC
sequence in either cleared the screen / retitled the terminal and a newline forged an extra line.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bonsai_core.canonical import save_canonical
from bonsai_core.escape import EscapingFilter, escape_name, escaping_logger
from bonsai_tools.synth import synthetic_checkpoint

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eexe.txt\r\nINFO forged line\x7f"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\x7f")


def assert_clean(text: str) -> None:
    for c in RAW:
        assert c not in text, (c, text[-400:])


def test_escape_name_leaves_one_printable_line() -> None:
    out = escape_name(HOSTILE)
    assert out.isprintable() and "\n" not in out
    assert "\\x1b]0;pwned" in out and "\\u202e" in out and "INFO forged line" in out
    assert escape_name("Bonsai ✓ 模型 café.safetensors") == "Bonsai ✓ 模型 café.safetensors"
    assert escape_name(Path("/m") / "a\nb") == "/m/a\\nb"


def test_logger_arguments_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    log = escaping_logger("bonsai_test.escape")
    with caplog.at_level(logging.INFO, logger="bonsai_test.escape"):
        log.info("loaded %s (%d tensors, %.1f MiB)", Path(HOSTILE), 3, 1.5)
        log.warning("%s", ValueError(HOSTILE))
        log.error(HOSTILE)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "(3 tensors, 1.5 MiB)" in messages[0]
    for m in messages:
        assert_clean(m)
        assert "\n" not in m


def _logger_calls(path: Path) -> list[str]:
    """``logging.getLogger(...)`` calls in a runtime module (each must be escaping_logger instead)."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger":
            arg = node.args[0] if node.args else None
            name = ast.unparse(arg) if arg is not None else ""
            out.append(f"{path.relative_to(REPO)}:{node.lineno} getLogger({name})")
    return out


def test_every_runtime_logger_escapes() -> None:
    """bonsai_core/ and nodes/ log only through escaping_logger (the NullHandler and a quieted third-party logger aside)."""
    allowed = {"bonsai_core/escape.py", "bonsai_core/__init__.py", "bonsai_core/formats/gguf.py"}
    calls = []
    for folder in ("bonsai_core", "nodes"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if str(path.relative_to(REPO)) not in allowed:
                calls += _logger_calls(path)
    assert not calls, calls
    import bonsai_core.convert as convert

    assert any(isinstance(f, EscapingFilter) for f in convert.log.filters)


def test_inspect_prints_hostile_names_and_metadata_escaped(tmp_path: Path) -> None:
    ckpt = synthetic_checkpoint("binary", "tiny", seed=3)
    ckpt = dataclasses.replace(ckpt, meta=dataclasses.replace(ckpt.meta, source_repo=HOSTILE))
    path = tmp_path / f"m{HOSTILE.replace(chr(0x7F), '')}.safetensors"
    save_canonical(ckpt, path)
    for argv in (["inspect", str(path)], ["inspect", str(tmp_path / f"missing{HOSTILE}.safetensors")]):
        out = subprocess.run([sys.executable, "-m", "bonsai_core", *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert "Traceback" not in out.stderr, out.stderr
        assert_clean(out.stdout + out.stderr)
        assert "forged line" in out.stdout + out.stderr  # shown, escaped, on the same line as the rest
        assert not any(line.startswith("INFO forged") for line in (out.stdout + out.stderr).splitlines())
