"""The downloader against a local Hub stand-in (tests/download/hub_server.py): file selection, progress,
verification, resume after a dropped connection and after an interrupted run, corrupt files,
offline, the CLI, and ``--to-canonical``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer
from release_trees import EXPECTED, REPO_ROOT, TERNARY_GEMLITE, blob, closed_port, gemlite_repo_files, resolve_gets

from bonsai_core import download as dl
from bonsai_core.download.hub_names import resolve_release


@pytest.fixture()
def hub() -> Iterator[HubServer]:
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}).start()
    yield server
    server.stop()


_get = resolve_gets
_blob = blob
_closed_port = closed_port


def test_repo_names_patterns_and_auto_release() -> None:
    assert dl.repo_name("binary", "gemlite") == "bonsai-image-binary-4B-gemlite-1bit"
    assert dl.repo_name("ternary", "mlx") == "bonsai-image-ternary-4B-mlx-2bit"
    assert dl.repo_name("ternary", "unpacked") == "bonsai-image-ternary-4B-unpacked"
    # auto = the gemlite release on every device: the shipped workflows load those folders
    assert resolve_release("auto") == "gemlite"
    mlx_tree = ["README.md", "model_index.json", "manifest.json", "assets/a.png", "scheduler/scheduler_config.json", "tokenizer/vocab.json"]
    mlx_tree += ["text_encoder-mlx-4bit/config.json", "text_encoder-mlx-4bit/model.safetensors", "transformer-packed-mflux/config.json"]
    mlx_tree += [
        "transformer-packed-mflux/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert dl.select_files(mlx_tree, "mlx") == sorted(f for f in mlx_tree if not f.startswith("assets/"))
    # only the transformer: no text encoder, tokenizer or VAE files (top-level configs stay)
    only_t = dl.select_files(mlx_tree, "mlx", ("transformer",))
    assert only_t == ["README.md", "manifest.json", "model_index.json", "scheduler/scheduler_config.json"] + [
        "transformer-packed-mflux/config.json",
        "transformer-packed-mflux/diffusion_pytorch_model.safetensors",
    ]
    assert dl.select_files(list(gemlite_repo_files()), "gemlite") == EXPECTED


def test_download_verifies_and_reports_progress(hub: HubServer, tmp_path: Path) -> None:
    events: list[tuple[int, int, str]] = []
    res = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint, progress=lambda d, t, f: events.append((d, t, f)))
    target = tmp_path / "bonsai" / "bonsai-image-ternary-4B-gemlite-2bit"
    assert res.local_dir == target and res.files == EXPECTED and res.commit == hub.repos[TERNARY_GEMLITE].commit
    files = gemlite_repo_files()
    for rel in EXPECTED:
        assert (target / rel).read_bytes() == files[rel], rel
    assert not (target / "assets").exists()
    total = sum(len(files[f]) for f in EXPECTED)
    assert res.total_bytes == total
    assert events[-1][:2] == (total, total)
    assert all(t == total for _, t, _ in events)
    assert [d for d, _, _ in events] == sorted(d for d, _, _ in events)  # monotonic
    assert {f for _, _, f in events} == set(EXPECTED)
    # a second run verifies from the manifest and transfers nothing
    hub.requests.clear()
    again = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    assert again.downloaded == [] and _get(hub) == []


def test_dropped_connection_resumes_with_a_range_request(tmp_path: Path) -> None:
    """What was written is kept and the rest is asked for with a Range (by huggingface_hub itself in
    2.x; by the downloader calling it again where an older version gives up on the dropped connection)."""
    big = "transformer-gemlite-int2/state_dict.pt"
    files = {**gemlite_repo_files(), big: _blob(12 << 20, 9)}
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, files)}).start()
    server.drop_after[big] = 11 << 20
    events: list[int] = []
    try:
        dl.download(
            "ternary", "gemlite", tmp_path, endpoint=server.endpoint, components=("transformer",), progress=lambda d, t, f: events.append(d)
        )
    finally:
        server.stop()
    gets = [r for f, r in _get(server) if f == big]
    # resumed where the partial file ends (huggingface_hub 2.x keeps whole 10 MiB chunks, 1.x every byte written)
    assert len(gets) == 2 and gets[0] is None and gets[1] is not None
    resumed_at = int(gets[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 11 << 20
    target = tmp_path / "bonsai" / "bonsai-image-ternary-4B-gemlite-2bit" / big
    assert target.read_bytes() == files[big]
    assert events[-1] == sum(len(files[f]) for f in dl.select_files(list(files), "gemlite", ("transformer",)))


def test_interrupted_run_resumes_with_the_missing_files(hub: HubServer, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    seen: list[str] = []

    def stop_on_third_file(done: int, total: int, name: str) -> None:
        if name not in seen:
            seen.append(name)
        if len(seen) == 3:
            raise Stop  # e.g. ComfyUI's interrupt, Ctrl-C, a crash

    with pytest.raises(Stop):
        dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint, progress=stop_on_third_file)
    hub.requests.clear()
    res = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    fetched = {f for f, _ in _get(hub)}
    assert seen[0] not in fetched and seen[1] not in fetched  # complete files are kept
    assert set(res.downloaded) == set(EXPECTED) - set(seen[:2])
    target = res.local_dir
    assert not list(target.rglob("*.incomplete"))
    for rel, data in gemlite_repo_files().items():
        if rel in EXPECTED:
            assert (target / rel).read_bytes() == data


@pytest.mark.parametrize("victim", ["text_encoder-hqq-4bit/qmodel.pt", "vae/config.json"])
def test_corrupt_file_is_rejected_and_removed(hub: HubServer, tmp_path: Path, victim: str) -> None:
    good = gemlite_repo_files()[victim]
    hub.corrupt[victim] = bytes([good[0] ^ 1]) + good[1:]  # same size, one bit flipped
    with pytest.raises(dl.DownloadError) as e:
        dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    msg = str(e.value)
    assert victim in msg and ("sha256" in msg or "git blob id" in msg) and "run the download again" in msg
    target = tmp_path / "bonsai" / "bonsai-image-ternary-4B-gemlite-2bit"
    assert not (target / victim).exists()
    # the Hub serves the right bytes again: the next run fetches only the removed file
    del hub.corrupt[victim]
    hub.requests.clear()
    res = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    assert victim in res.downloaded and (target / victim).read_bytes() == good


def test_damaged_file_on_disk_is_fetched_again(hub: HubServer, tmp_path: Path) -> None:
    res = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    victim = res.local_dir / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))  # bit rot / a half-finished manual copy: same size, new mtime
    hub.requests.clear()
    again = dl.download("ternary", "gemlite", tmp_path, endpoint=hub.endpoint)
    assert again.downloaded == ["vae/diffusion_pytorch_model.safetensors"]
    assert victim.read_bytes() == gemlite_repo_files()["vae/diffusion_pytorch_model.safetensors"]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_gives_one_clear_message(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(dl.DownloadError) as e:
        dl.download("binary", "mlx", tmp_path, endpoint=endpoint)
    msg = str(e.value)
    assert "Cannot reach the Hugging Face Hub" in msg and endpoint in msg
    assert "https://huggingface.co/prism-ml/bonsai-image-binary-4B-mlx-1bit" in msg
    assert str(tmp_path / "bonsai" / "bonsai-image-binary-4B-mlx-1bit") in msg


def _cli(args: list[str], endpoint: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run([sys.executable, "-m", "bonsai_core", "download", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_download_and_offline(hub: HubServer, tmp_path: Path) -> None:
    out = _cli(["ternary", "--backend", "gemlite", "--models-dir", str(tmp_path)], hub.endpoint)
    assert out.returncode == 0, out.stderr
    assert f"{len(EXPECTED)} files verified" in out.stdout and "100%" in out.stderr
    assert (tmp_path / "bonsai" / "bonsai-image-ternary-4B-gemlite-2bit" / "vae" / "config.json").is_file()
    off = _cli(["ternary", "--backend", "gemlite", "--models-dir", str(tmp_path / "x")], f"http://127.0.0.1:{_closed_port()}")
    assert off.returncode == 3 and "Cannot reach the Hugging Face Hub" in off.stderr and "Traceback" not in off.stderr


def test_to_canonical_writes_the_diffusion_model(tmp_path: Path) -> None:
    """A repo whose transformer is a real (tiny) gemlite pack converts to the canonical file."""
    pack = tmp_path / "pack"
    made = subprocess.run(
        [sys.executable, "-m", "bonsai_tools", "make-fixture", "--variant", "ternary", "--size", "tiny", "--format", "gemlite", str(pack)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    files = {str(p.relative_to(pack)).replace(os.sep, "/"): p.read_bytes() for p in pack.rglob("*") if p.is_file()}
    files["model_index.json"] = b"{}"
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, files)}).start()
    try:
        res = dl.download(
            "ternary", "gemlite", tmp_path / "models", endpoint=server.endpoint, components=("transformer",), to_canonical=True
        )
    finally:
        server.stop()
    # beside the snapshots in models/bonsai/, where the stock Load Diffusion Model does not list it
    assert res.canonical == tmp_path / "models" / "bonsai" / "bonsai-image-ternary-4B.safetensors"
    assert not (tmp_path / "models" / "diffusion_models").exists()
    from bonsai_core.canonical import is_canonical, load_canonical

    assert is_canonical(res.canonical)
    assert load_canonical(res.canonical).meta.variant == "ternary"
