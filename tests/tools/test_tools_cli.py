"""``python -m bonsai_tools``: every registered command imports and shows in the help (on a machine
without a GPU, before ComfyUI is booted), and bad input exits 2 with one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bonsai_tools.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "bonsai_tools", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_help_lists_every_command() -> None:
    r = _run("--help")
    assert r.returncode == 0, r.stderr[-3000:]
    assert COMMANDS and all(name in r.stdout for name in COMMANDS)


def test_a_format_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """The tooling CLI reports a BonsaiFormatError (here: the output is an existing folder) like the runtime CLI."""
    r = _run("make-fixture", "--variant", "binary", str(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and str(tmp_path) in r.stderr and "Traceback" not in r.stderr
