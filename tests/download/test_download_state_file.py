"""The downloader's own record (``.bonsai-download.json``) is read like any untrusted file.

A FIFO in its place used to hang the download forever, a link to ``/dev/zero`` used to read until
memory ran out. Now each of these is one warning line naming the file, every file is verified again,
and the record is rewritten as a regular file. The CLI runs in a subprocess under a time limit and an
address-space cap (1 GiB above what the interpreter needs), so a hang or an unbounded read fails.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer
from release_trees import EXPECTED, SNAP, TERNARY_GEMLITE, gemlite_repo_files, run_cli

from bonsai_core import download as dl
from bonsai_core.download.hub_names import MANIFEST

BONSAI_PY = str(Path(dl.__file__).parents[2] / "bonsai.py")
# The CLI under an address-space cap: a read of /dev/zero into memory dies here instead of swapping.
CAPPED = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _dev_zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


def _huge(p: Path) -> None:
    with open(p, "wb") as f:  # sparse: 8 GiB declared, nothing on disk
        f.truncate(8 << 30)


def _nan(p: Path) -> None:
    p.write_text('{"commit": NaN, "verified": {}}')


def _folder(p: Path) -> None:
    p.mkdir()


HOSTILE: dict[str, Callable[[Path], None]] = {"fifo": _fifo, "link_to_dev_zero": _dev_zero, "huge": _huge, "nan": _nan}


@pytest.fixture()
def server():
    s = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}).start()
    yield s
    s.stop()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero (POSIX)")
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_state_file_is_one_warning_and_replaced(kind: str, tmp_path: Path, server: HubServer) -> None:
    models = tmp_path / "models"
    snap = models / "bonsai" / SNAP
    snap.mkdir(parents=True)
    HOSTILE[kind](snap / MANIFEST)
    out = run_cli(
        ["-c", CAPPED, BONSAI_PY, "download", "ternary", "--quiet", "--models-dir", str(models)],
        endpoint=server.endpoint,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if MANIFEST in line]
    assert len(warnings) == 1, out.stderr[-2000:]
    assert "verifying every file again" in warnings[0] and "Traceback" not in out.stderr
    record = snap / MANIFEST
    assert stat.S_ISREG(os.lstat(record).st_mode) and record.stat().st_size < 1 << 20
    assert json.loads(record.read_text())["commit"] != "NaN"
    assert all((snap / f).is_file() for f in EXPECTED)


def test_state_file_that_is_a_folder_is_one_error(tmp_path: Path, server: HubServer) -> None:
    """A folder in its place cannot be replaced by a rename: one error line, no traceback."""
    models = tmp_path / "models"
    snap = models / "bonsai" / SNAP
    snap.mkdir(parents=True)
    _folder(snap / MANIFEST)
    out = run_cli([BONSAI_PY, "download", "ternary", "--quiet", "--models-dir", str(models)], endpoint=server.endpoint, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert MANIFEST in out.stderr
