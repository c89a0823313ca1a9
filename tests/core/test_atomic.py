"""Writes that can only add: an existing folder or special file as output is refused and never touched,
temporaries are cleaned on failure, on SIGTERM/SIGHUP, and when a dead writer left them."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from core_helpers import FORMATS, SEED

from bonsai_core.atomic import OutputPathError, atomic_path, remove_stale_partials
from bonsai_core.cli import main
from bonsai_tools.cli import main as tools_main

REPO = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _populated_folder(root: Path) -> Path:
    folder = root / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.txt").write_text("do not delete")
    (folder / "sub" / "deep.bin").write_bytes(os.urandom(64))
    return folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_into_existing_folder_is_refused_and_leaves_it_intact(tiny: dict, tmp_path: Path, fmt: str) -> None:
    folder = _populated_folder(tmp_path)
    before = _digest(folder)
    src = tiny[("binary", "canonical")]
    assert main(["convert", str(src), str(folder), "--to", fmt]) == 2
    assert folder.is_dir() and _digest(folder) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_convert_into_current_folder_keeps_the_source(tiny: dict, tmp_path: Path) -> None:
    """The reported crash: ``convert model.safetensors .`` emptied the folder, the source included."""
    src = tmp_path / "model.safetensors"
    src.write_bytes(tiny[("ternary", "canonical")].read_bytes())
    before = _digest(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "bonsai_core", "convert", "model.safetensors", "."], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "existing folder" in r.stderr and "Traceback" not in r.stderr
    assert _digest(tmp_path) == before


@pytest.mark.parametrize("command", ["dequantize", "make-fixture"])
def test_other_writing_commands_refuse_an_existing_folder(tiny: dict, tmp_path: Path, command: str) -> None:
    folder = _populated_folder(tmp_path)
    before = _digest(folder)
    argv = (
        ["dequantize", str(tiny[("binary", "canonical")]), str(folder)]
        if command == "dequantize"
        else ["make-fixture", "--variant", "binary", "--size", "tiny", "--format", "canonical", "--seed", str(SEED), str(folder)]
    )
    assert (tools_main if command == "make-fixture" else main)(argv) == 2
    assert _digest(folder) == before


def test_symlink_and_fifo_outputs_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (link, fifo, tmp_path):
        with pytest.raises(OutputPathError) as e, atomic_path(target) as tmp:
            tmp.write_text("new")
        assert str(target) in str(e.value)
    assert real.read_text() == "x" and link.is_symlink() and fifo.exists()


def test_folder_output_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    target.write_text("a file the user made")
    with pytest.raises(OutputPathError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("y")
    assert target.read_text() == "a file the user made"
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]


def test_regular_file_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_disk_errors_are_named(tmp_path: Path) -> None:
    import errno

    for code, text in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")):
        target = tmp_path / "x.bin"
        with pytest.raises(OutputPathError) as e, atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(code, text)
        assert "x.bin" in str(e.value) and text in str(e.value)
        assert list(tmp_path.iterdir()) == []


def test_stale_partials_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    target = tmp_path / "m.safetensors"
    stale_file = tmp_path / f".m.safetensors.{dead}.abc.partial"
    stale_dir = tmp_path / f".m.safetensors.{dead}.def.partial"
    live = tmp_path / f".m.safetensors.{os.getppid()}.ghi.partial"  # a running process: a concurrent writer
    other = tmp_path / f".other.{dead}.jkl.partial"
    stale_file.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "f").write_text("y")
    live.write_bytes(b"z")
    other.write_bytes(b"w")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()
    assert remove_stale_partials(target) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_a_write_leave_no_partial(tmp_path: Path, sig: int) -> None:
    """A writing CLI process killed by SIGTERM/SIGHUP removes its temporary and exits non-zero."""
    code = (
        "import sys, time\n"
        "from bonsai_core.atomic import atomic_path, exit_on_termination\n"
        "with exit_on_termination():\n"
        f"    with atomic_path({str(tmp_path / 'out.bin')!r}) as tmp:\n"
        "        tmp.write_bytes(b'partial')\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None and p.stdout.readline().strip() == "writing"
    assert any(x.name.endswith(".partial") for x in tmp_path.iterdir())
    p.send_signal(sig)
    rc = p.wait(timeout=30)
    assert rc == 128 + sig
    deadline = time.time() + 5
    while any(tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
