"""Writes that only add, also when interrupted or when the disk refuses.

* SIGTERM in the middle of ``convert`` into folders that do not exist yet leaves nothing, and the
  same command then succeeds (before: the new snapshot folder stayed behind, empty, and the second
  run refused it as "an existing folder").
* SIGKILL leaves one ``.partial`` (nothing can run on SIGKILL); the next run removes it.
* A full disk (a real 64 KiB tmpfs, mounted in a user namespace) and an I/O error (EIO injected into
  each writer's own write call) are one ``BonsaiFormatError`` line for every writer: gemlite
  (torch.save), GGUF, MLX, unpacked and canonical; nothing is left on the disk.

The interrupt tests hold the writer inside its atomic block (a patched ``write_json`` / ``os.fsync``
that reports and waits), so the signal lands mid-write deterministically.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import FORMATS

from bonsai_core.atomic import OutputPathError
from bonsai_core.convert import convert

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI with the writer held inside its atomic block: prints HOLD, then waits to be signalled.
HELD_CLI = """
import os, sys, time
import bonsai_core.formats.gemlite as g, bonsai_core.formats.mlx as m, bonsai_core.formats.unpacked as u, bonsai_core.formats.gguf as gg
def hold(*a, **k):
    print("HOLD", flush=True)
    time.sleep(120)
for mod in (g, m, u):
    mod.write_json = hold
os.fsync = hold
gg.gguf.GGUFWriter.write_tensor_data = hold
from bonsai_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def destination(root: Path, fmt: str) -> Path:
    """A convert output below two folders that do not exist yet."""
    base = root / "new" / "deeper"
    return base / {"canonical": "out.safetensors", "gguf": "out.gguf"}.get(fmt, "snapshot")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_held(src: Path, dst: Path, fmt: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_CLI, "convert", str(src), str(dst), "--to", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "HOLD" not in line:
        proc.kill()
        pytest.fail(f"the writer never reached its atomic block: {line!r} {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    return proc


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bonsai_core", *argv], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sigterm_mid_convert_into_new_folders_leaves_nothing(fmt: str, tiny: dict, tmp_path: Path) -> None:
    src = tiny[("binary", "canonical")]
    dst = destination(tmp_path / "out", fmt)
    (tmp_path / "out").mkdir()
    proc = run_held(src, dst, fmt)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert tree(tmp_path / "out") == [], "an interrupted convert left something behind"
    again = run_cli("convert", str(src), str(dst), "--to", fmt)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ".partial" not in " ".join(tree(tmp_path / "out"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("fmt", ["gemlite", "canonical"])
def test_sigkill_partial_is_removed_by_the_next_run(fmt: str, tiny: dict, tmp_path: Path) -> None:
    src = tiny[("binary", "canonical")]
    (tmp_path / "out").mkdir()
    dst = destination(tmp_path / "out", fmt)
    proc = run_held(src, dst, fmt)
    proc.kill()
    proc.wait(timeout=60)
    left = tree(tmp_path / "out")
    assert left and all(".partial" in p for p in left), left  # only the dead writer's temporary
    again = run_cli("convert", str(src), str(dst), "--to", fmt)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ".partial" not in " ".join(tree(tmp_path / "out")), tree(tmp_path / "out")
    assert dst.exists()


def _can_mount_tmpfs() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm and tmpfs (user namespaces) for a real full disk")
@pytest.mark.parametrize("fmt", FORMATS)
def test_full_disk_is_one_line_for_every_writer(fmt: str, tiny: dict, tmp_path: Path) -> None:
    src = tiny[("binary", "canonical")]
    disk = tmp_path / "disk"
    disk.mkdir()
    dst = destination(disk, fmt)
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {disk} && "
        f"{sys.executable} -m bonsai_core convert {src} {dst} --to {fmt}; rc=$?; "
        f"echo LEFT $(find {disk} -mindepth 1 | wc -l); exit $rc"
    )
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, (out.stdout, out.stderr[-3000:])
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "No space left on device" in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "LEFT 0" in out.stdout, out.stdout


def _eio(*_a: object, **_k: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("fmt", FORMATS)
def test_io_error_is_one_line_for_every_writer(fmt: str, tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import bonsai_core.formats.gguf as gguf_fmt

    monkeypatch.setattr(torch, "save", _eio)  # gemlite's state_dict.pt
    monkeypatch.setattr(os, "fsync", _eio)  # every safetensors file (canonical, MLX, unpacked)
    monkeypatch.setattr(gguf_fmt.gguf.GGUFWriter, "write_tensor_data", _eio)
    dst = destination(tmp_path, fmt)
    with pytest.raises(OutputPathError) as e:
        convert(tiny[("binary", "canonical")], dst, fmt)
    assert "Input/output error" in str(e.value) and "\n" not in str(e.value)
    assert tree(tmp_path) == []
