"""A hostile Hub: file names that climb out of the target folder, absolute and UNC paths, NUL,
backslashes, and links planted inside a snapshot folder. The pack refuses them itself, before any
file request, and nothing outside the snapshot folder is written or removed (whatever
huggingface_hub version is installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer
from release_trees import EXPECTED, SNAP, TERNARY_GEMLITE, file_requests, gemlite_repo_files, run_cli, tree

from bonsai_core import download as dl
from bonsai_core.download.errors import UNSAFE_NAME

HOSTILE = [
    "../outside.json",
    "../../victim.json",
    "vae/../../../victim.json",
    "/tmp/bonsai-absolute-victim.json",
    "//server/share/victim.json",
    "\\\\server\\share\\victim.json",
    "..\\victim.json",
    "vae/config\x00.json",
    "C:/victim.json",
    "x" * 300 + ".json",
]


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Path]:
    """A models folder inside a home folder that holds files a hostile name would hit."""
    home = tmp_path / "home"
    models = home / "comfy" / "models"
    (models / "bonsai").mkdir(parents=True)
    for victim in (home / "victim.json", home / "comfy" / "victim.json", models / "victim.json", models / "outside.json"):
        victim.write_text('{"keep": true}')
    return {"home": home, "models": models}


def _serve(extra: dict[str, bytes]) -> HubServer:
    return HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, {**gemlite_repo_files(), **extra})}).start()


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_name_refuses_the_repo_before_any_file_request(world: dict[str, Path], name: str) -> None:
    before = tree(world["home"])
    server = _serve({name: b'{"pwned": true}'})
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download("ternary", "gemlite", world["models"], endpoint=server.endpoint)
    finally:
        server.stop()
    assert e.value.kind == UNSAFE_NAME
    msg = str(e.value)
    assert TERNARY_GEMLITE in msg and "unsafe file name" in msg and ascii(name)[:40] in msg
    assert file_requests(server) == []  # refused from the listing alone
    assert tree(world["home"]) == before  # nothing written, nothing removed
    assert not (world["models"] / "bonsai" / SNAP).exists()
    assert not Path("/tmp/bonsai-absolute-victim.json").exists()


def test_cli_refuses_a_hostile_repo_with_one_message(world: dict[str, Path]) -> None:
    before = tree(world["home"])
    server = _serve({"../../victim.json": b"{}"})
    try:
        out = run_cli(
            [str(Path(dl.__file__).parents[2] / "bonsai.py"), "download", "ternary", "--models-dir", str(world["models"])],
            endpoint=server.endpoint,
        )
    finally:
        server.stop()
    assert out.returncode == 3, out.stderr
    assert "unsafe file name '../../victim.json'" in out.stderr and "Traceback" not in out.stderr
    assert tree(world["home"]) == before


def test_unexpected_safe_names_are_listed_but_never_downloaded(world: dict[str, Path]) -> None:
    extra = {
        "payload/run.sh": b"#!/bin/sh\n",
        ".cache/huggingface/download/vae/config.json.metadata": b"forged",
        ".bonsai-download.json": b'{"commit": "forged"}',
        "notes/deep.json": b"{}",
    }
    server = _serve(extra)
    try:
        res = dl.download("ternary", "gemlite", world["models"], endpoint=server.endpoint)
    finally:
        server.stop()
    assert res.files == EXPECTED
    fetched = {p.split("/resolve/", 1)[1].split("/", 1)[1] for p in file_requests(server)}
    assert fetched == set(EXPECTED)
    snap = world["models"] / "bonsai" / SNAP
    assert not (snap / "payload").exists() and not (snap / "notes").exists()
    assert "forged" not in (snap / ".bonsai-download.json").read_text()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_link_inside_the_snapshot_folder_is_not_followed(world: dict[str, Path], tmp_path: Path) -> None:
    """A planted link (``vae -> elsewhere``) would make huggingface_hub write and delete outside."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("precious")
    snap = world["models"] / "bonsai" / SNAP
    snap.mkdir(parents=True)
    (snap / "vae").symlink_to(elsewhere, target_is_directory=True)
    server = _serve({})
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download("ternary", "gemlite", world["models"], endpoint=server.endpoint)
    finally:
        server.stop()
    assert e.value.kind == UNSAFE_NAME and "symbolic link" in str(e.value) and str(snap / "vae") in str(e.value)
    assert file_requests(server) == []
    assert tree(elsewhere) == {"config.json": b"precious"}
