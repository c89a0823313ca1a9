"""Each way a download can fail ends in one message of its own kind, with the manual steps (what to
fetch from where into which folder): offline, a stalled Hub (not "cannot reach"), a repo that is not
there, a full disk (checked up front, and a write refused mid-file)."""

from __future__ import annotations

import resource
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from hub_server import INFO, FakeRepo, HubServer
from release_trees import REPO_ROOT, SNAP, TERNARY_GEMLITE, blob, closed_port, file_requests, gemlite_repo_files, run_cli

from bonsai_core import download as dl
from bonsai_core.download.errors import DISK_FULL, NOT_FOUND, OFFLINE, STALLED

BONSAI_PY = str(REPO_ROOT / "bonsai.py")
MANUAL = "To install by hand: download https://huggingface.co/"


def _assert_manual_steps(msg: str, repo_id: str, target: Path) -> None:
    assert f"{MANUAL}{repo_id}/tree/main" in msg and f"into {target}/" in msg and "needed:" in msg


def test_offline(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(dl.DownloadError) as e:
        dl.download("binary", "mlx", tmp_path, endpoint=endpoint)
    assert e.value.kind == OFFLINE
    msg = str(e.value)
    assert msg.startswith(f"Cannot reach the Hugging Face Hub at {endpoint}")
    _assert_manual_steps(msg, "prism-ml/bonsai-image-binary-4B-mlx-1bit", tmp_path / "bonsai" / "bonsai-image-binary-4B-mlx-1bit")
    assert "text_encoder-mlx-4bit/" in msg and "transformer-packed-mflux/" in msg


def test_stalled_listing_is_a_timeout_not_offline(tmp_path: Path) -> None:
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}, stall={INFO: 4.0}).start()
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download("ternary", "gemlite", tmp_path, endpoint=server.endpoint, timeout=1.0)
    finally:
        server.stop()
    assert e.value.kind == STALLED
    msg = str(e.value)
    assert "stopped answering while listing the repository: no data arrived in time" in msg and "Cannot reach" not in msg
    _assert_manual_steps(msg, TERNARY_GEMLITE, tmp_path / "bonsai" / SNAP)


def test_stalled_body_in_the_cli(tmp_path: Path) -> None:
    """The Hub stops sending mid-file: huggingface_hub's read timeout (HF_HUB_DOWNLOAD_TIMEOUT) fires."""
    big = "transformer-gemlite-int2/state_dict.pt"
    files = {**gemlite_repo_files(), big: blob(2 << 20, 7)}
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, files)}).start()
    server.stall_body[big] = (1 << 20, 60.0)  # longer than the CLI waits, retries included
    try:
        out = run_cli(
            [BONSAI_PY, "download", "ternary", "--models-dir", str(tmp_path), "--components", "transformer", "-q", "--timeout", "1"],
            endpoint=server.endpoint,
            env={"HF_HUB_DOWNLOAD_TIMEOUT": "1"},
            timeout=120,
        )
    finally:
        server.stall_body.clear()
        server.stop()
    assert out.returncode == 3, out.stdout + out.stderr
    assert "stopped answering while downloading transformer-gemlite-int2/state_dict.pt" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_repo_not_found(tmp_path: Path) -> None:
    server = HubServer({}).start()  # the Hub answers, but has no such repo
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download("binary", "gemlite", tmp_path, endpoint=server.endpoint)
    finally:
        server.stop()
    assert e.value.kind == NOT_FOUND
    repo = "prism-ml/bonsai-image-binary-4B-gemlite-1bit"
    msg = str(e.value)
    assert msg.startswith(f"{repo} was not found on the Hub at {server.endpoint}")
    _assert_manual_steps(msg, repo, tmp_path / "bonsai" / "bonsai-image-binary-4B-gemlite-1bit")
    assert not (tmp_path / "bonsai").exists()


def test_not_enough_space_is_found_before_any_transfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}).start()
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download("ternary", "gemlite", tmp_path, endpoint=server.endpoint)
    finally:
        server.stop()
    assert e.value.kind == DISK_FULL
    msg = str(e.value)
    assert msg.startswith(f"Not enough disk space in {tmp_path / 'bonsai' / SNAP}: the download needs") and "0.00 GB are free" in msg
    _assert_manual_steps(msg, TERNARY_GEMLITE, tmp_path / "bonsai" / SNAP)
    assert file_requests(server) == []


def test_a_write_refused_mid_file_is_a_disk_message(tmp_path: Path) -> None:
    """The file system refuses a write (here: the file-size limit, EFBIG, as a quota would): one message, exit 3."""
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}).start()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))  # smaller than state_dict.pt (300 kB)

    try:
        out = run_cli([BONSAI_PY, "download", "ternary", "--models-dir", str(tmp_path), "-q"], endpoint=server.endpoint, preexec_fn=limit)
    finally:
        server.stop()
    assert out.returncode == 3, out.stdout + out.stderr
    assert "Not enough disk space in" in out.stderr and "File too large" in out.stderr and "Traceback" not in out.stderr
    assert MANUAL in out.stderr
