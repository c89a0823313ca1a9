"""Which ComfyUI a download goes to, with two ComfyUI installs on the machine: the one the pack is
installed in wins over $COMFYUI_PATH and ~/comfy/ComfyUI, its extra_model_paths.yaml is honoured, an
explicit --models-dir wins over everything, and the command line says where before it writes.

The command-line runs use a git-install copy of the pack (``bonsai.py`` + ``bonsai_core/`` in
``<ComfyUI>/custom_nodes/bonsai_image``), run with this Python from an unrelated folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer
from release_trees import REPO_ROOT, SNAP, TERNARY_GEMLITE, closed_port, gemlite_repo_files, run_cli

from bonsai_core.download.models_dir import ModelsDirError, bonsai_folders_of, containing_comfyui, resolve_models_location


def make_comfyui(root: Path) -> Path:
    """A ComfyUI-shaped folder: main.py, models/, custom_nodes/."""
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "custom_nodes").mkdir()
    (root / "main.py").write_text("# ComfyUI\n")
    return root


def install_pack(comfyui: Path, name: str = "bonsai_image", *, link: bool = False) -> Path:
    """What ``git clone`` leaves in custom_nodes/ as far as the command line needs it (or a link to this checkout)."""
    pack = comfyui / "custom_nodes" / name
    if link:
        pack.symlink_to(REPO_ROOT, target_is_directory=True)
        return pack
    pack.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "bonsai.py", pack / "bonsai.py")
    shutil.copytree(REPO_ROOT / "bonsai_core", pack / "bonsai_core", ignore=shutil.ignore_patterns("__pycache__"))
    return pack


@pytest.fixture()
def two_installs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """ComfyUI A holds the pack; ComfyUI B is $COMFYUI_PATH; an empty HOME (no ~/comfy/ComfyUI)."""
    a, b = make_comfyui(tmp_path / "A" / "ComfyUI"), make_comfyui(tmp_path / "B" / "ComfyUI")
    pack = install_pack(a)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COMFYUI_PATH", str(b))
    return {"A": a, "B": b, "pack": pack, "home": home, "elsewhere": elsewhere}


@pytest.fixture()
def hub() -> Iterator[HubServer]:
    server = HubServer({TERNARY_GEMLITE: FakeRepo(TERNARY_GEMLITE, gemlite_repo_files())}).start()
    yield server
    server.stop()


# -- the resolution itself -------------------------------------------------------------------


def test_order_containing_comfyui_then_env_then_home(
    two_installs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_installs["A"], two_installs["B"]
    loc = resolve_models_location(pack_dir=two_installs["pack"])
    assert loc.bonsai_dir == a / "models" / "bonsai" and loc.comfyui == a and "installed in" in loc.source
    standalone = tmp_path / "clone" / "bonsai_image"  # a checkout outside any custom_nodes/
    standalone.mkdir(parents=True)
    assert containing_comfyui(standalone) is None
    loc = resolve_models_location(pack_dir=standalone)
    assert loc.bonsai_dir == b / "models" / "bonsai" and loc.source.startswith("$COMFYUI_PATH")
    monkeypatch.delenv("COMFYUI_PATH")
    home_comfy = make_comfyui(two_installs["home"] / "comfy" / "ComfyUI")
    assert resolve_models_location(pack_dir=standalone).bonsai_dir == home_comfy / "models" / "bonsai"
    shutil.rmtree(home_comfy)
    with pytest.raises(ModelsDirError, match=r"cannot tell which ComfyUI.*COMFYUI_PATH \(not set\).*--models-dir"):
        resolve_models_location(pack_dir=standalone)


def test_an_explicit_models_dir_wins_and_is_resolved_against_the_cwd(
    two_installs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(two_installs["elsewhere"])
    loc = resolve_models_location("rel/models", pack_dir=two_installs["pack"])
    assert loc.bonsai_dir == two_installs["elsewhere"] / "rel" / "models" / "bonsai" and loc.bonsai_dir.is_absolute()
    file = two_installs["elsewhere"] / "afile"
    file.write_text("x")
    with pytest.raises(ModelsDirError, match="not a folder"):
        resolve_models_location(str(file))


def test_a_running_comfyuis_folders_win_over_the_environment(two_installs: dict[str, Path], tmp_path: Path) -> None:
    registered = [str(tmp_path / "fast-disk" / "bonsai"), str(two_installs["A"] / "models" / "bonsai")]
    loc = resolve_models_location(registered=registered, comfy_models_dir=two_installs["A"] / "models", pack_dir=two_installs["pack"])
    assert loc.bonsai_dir == tmp_path / "fast-disk" / "bonsai"


def test_extra_model_paths_yaml_is_applied_like_comfyui(
    two_installs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = two_installs["A"]
    monkeypatch.setenv("STORE", str(tmp_path / "store"))
    (a / "extra_model_paths.yaml").write_text(
        "other_ui:\n"
        "  base_path: ../shared\n"  # relative to the yaml's folder
        "  checkpoints: models/checkpoints\n"
        "  bonsai: |\n"
        "    models/bonsai-a\n"
        "    models/bonsai-b\n"
        "big_disk:\n"
        "  base_path: $STORE\n"
        "  is_default: true\n"
        "  bonsai: bonsai\n"
    )
    folders, used = bonsai_folders_of(a)
    assert used == a / "extra_model_paths.yaml"
    assert folders == [
        str(tmp_path / "store" / "bonsai"),  # is_default goes first
        str(a.parent / "shared" / "models" / "bonsai-a"),
        str(a.parent / "shared" / "models" / "bonsai-b"),
        str(a / "models" / "bonsai"),  # what the pack registers, last
    ]
    loc = resolve_models_location(pack_dir=two_installs["pack"])
    assert loc.bonsai_dir == tmp_path / "store" / "bonsai" and loc.extra_config == a / "extra_model_paths.yaml"
    (a / "extra_model_paths.yaml").write_text("broken: [\n")
    with pytest.raises(ModelsDirError, match="extra_model_paths.yaml: cannot read it"):
        resolve_models_location(pack_dir=two_installs["pack"])


# -- the command line from a git install ------------------------------------------------------


@pytest.mark.parametrize("install", ["clone", "link"])
def test_bonsai_py_downloads_into_the_comfyui_it_is_installed_in(two_installs: dict[str, Path], hub: HubServer, install: str) -> None:
    a, b = two_installs["A"], two_installs["B"]
    pack = two_installs["pack"] if install == "clone" else install_pack(a, "bonsai_linked", link=True)
    out = run_cli(
        [str(pack / "bonsai.py"), "download", "ternary", "-q"],
        endpoint=hub.endpoint,
        cwd=two_installs["elsewhere"],
        env={"HOME": str(two_installs["home"]), "COMFYUI_PATH": str(b), "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    snap = a / "models" / "bonsai" / SNAP
    first = out.stdout.splitlines()[0]
    assert first == f"Downloading {TERNARY_GEMLITE} into {snap}"  # auto = gemlite, said before writing
    assert f"the ComfyUI this pack is installed in ({a})" in out.stdout
    assert (snap / "vae" / "config.json").is_file()
    assert not (b / "models" / "bonsai").exists() and not (two_installs["elsewhere"] / "models").exists()


def test_python_m_from_the_pack_folder_finds_the_parent_comfyui(two_installs: dict[str, Path]) -> None:
    """The README's older route still works, and still finds ComfyUI A (here offline: it says where first)."""
    a, b = two_installs["A"], two_installs["B"]
    out = run_cli(
        ["-m", "bonsai_core", "download", "ternary", "--release", "gemlite", "-q"],
        endpoint=f"http://127.0.0.1:{closed_port()}",
        cwd=two_installs["pack"],
        env={"HOME": str(two_installs["home"]), "COMFYUI_PATH": str(b), "PYTHONPATH": ""},
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == f"Downloading {TERNARY_GEMLITE} into {a / 'models' / 'bonsai' / SNAP}"
    assert "Cannot reach the Hugging Face Hub" in out.stderr and "Traceback" not in out.stderr
    assert not (a / "models" / "bonsai").exists() and not (b / "models" / "bonsai").exists()  # nothing written offline
