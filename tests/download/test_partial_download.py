"""What a release folder says about an interrupted download (bonsai_core/download/partial.py), without ComfyUI:
huggingface_hub's ``*.incomplete`` files in a local-dir download and in its own cache layout."""

from __future__ import annotations

from pathlib import Path

from bonsai_core.download.partial import download_command, interrupted_files, release_root, repo_of, resume_hint


def _interrupted_local_dir(root: Path, name: str, folder: str) -> Path:
    release = root / name
    (release / "vae").mkdir(parents=True)
    cache = release / ".cache" / "huggingface" / "download" / folder
    cache.mkdir(parents=True)
    (cache / "aGFzaA.0123abcd.incomplete").write_bytes(b"\0" * 10)
    (cache / "config.json.metadata").write_text("x")  # a finished file's record: not a partial
    return release


def test_local_dir_download_interrupted_inside_a_component(tmp_path: Path) -> None:
    release = _interrupted_local_dir(tmp_path, "bonsai-image-binary-4B-mlx-1bit", "transformer-packed-mflux")
    assert interrupted_files(release) == ["a file in transformer-packed-mflux/"]
    assert release_root(release / "vae", tmp_path) == release
    hint = resume_hint(release / "vae", "bonsai-image", tmp_path)
    assert hint is not None and "run the same download again to resume" in hint
    assert "`python custom_nodes/bonsai-image/bonsai.py download binary --release mlx`" in hint


def test_complete_release_has_no_hint(tmp_path: Path) -> None:
    release = tmp_path / "bonsai-image-ternary-4B-gemlite-2bit"
    (release / ".cache" / "huggingface" / "download" / "vae").mkdir(parents=True)
    (release / "vae").mkdir()
    assert interrupted_files(release) == []
    assert resume_hint(release / "vae", "p", tmp_path) is None


def test_hub_cache_layout(tmp_path: Path) -> None:
    repo = tmp_path / "models--prism-ml--bonsai-image-ternary-4B-gemlite-2bit"
    snap = repo / "snapshots" / ("0" * 40)
    (snap / "vae").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / ("f" * 64 + ".incomplete")).write_bytes(b"\0")
    assert release_root(snap / "vae", tmp_path) == snap
    assert repo_of(snap) == ("ternary", "gemlite")
    assert interrupted_files(snap) == ["blob ffffffffffff"]
    assert download_command(snap, "x") == "python custom_nodes/x/bonsai.py download ternary"


def test_release_root_stays_inside_the_models_folder(tmp_path: Path) -> None:
    outer = _interrupted_local_dir(tmp_path, "elsewhere", "vae")
    models = outer / "models"
    (models / "plain").mkdir(parents=True)
    assert release_root(models / "plain", models) == models / "plain"  # never climbs to the interrupted folder above
    assert repo_of(models / "plain") is None
