"""``bonsai.py`` run with the wrong Python (the system ``python3`` instead of ComfyUI's venv, the
most common shell slip): one line naming ComfyUI's interpreter and what is missing, no traceback.
And the commands the registry archive keeps: ``tune`` runs from an archive-like copy of the pack,
``--help`` shows how the script was started, the tooling CLI runs from any folder."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from release_trees import REPO_ROOT


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh venv without pip or site-packages: no torch, no huggingface_hub (as /usr/bin/python3 on a clean machine)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60)
    assert probe.returncode != 0, "the bare venv can import torch: the test would not test anything"
    return str(python)


def _comfyui_with_pack(root: Path, *, venv: bool) -> Path:
    """``root/ComfyUI`` with the pack linked into custom_nodes (and, if asked, a venv python that is the test's own)."""
    comfy = root / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "models").mkdir()
    (comfy / "main.py").write_text("# ComfyUI\n")
    (comfy / "custom_nodes" / "bonsai-image").symlink_to(REPO_ROOT, target_is_directory=True)
    if venv:
        (comfy / "venv" / "bin").mkdir(parents=True)
        (comfy / "venv" / "bin" / "python").symlink_to(sys.executable)
    return comfy


def _run(python: str, script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def test_wrong_python_names_comfyuis_venv_and_what_is_missing(bare_python: str, tmp_path: Path) -> None:
    comfy = _comfyui_with_pack(tmp_path, venv=True)
    script = comfy / "custom_nodes" / "bonsai-image" / "bonsai.py"
    r = _run(bare_python, script, "download", "ternary", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = lines[0]
    assert "has no huggingface_hub" in line and bare_python in line, line
    assert f"run it with ComfyUI's Python: {comfy / 'venv' / 'bin' / 'python'} {script} download ternary" in line, line
    r = _run(bare_python, script, "inspect", "x.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has no torch" in r.stderr and str(comfy / "venv" / "bin" / "python") in r.stderr, r.stderr


def test_wrong_python_names_python_embeded_of_the_windows_portable_build(bare_python: str, tmp_path: Path) -> None:
    comfy = _comfyui_with_pack(tmp_path, venv=False)
    (tmp_path / "python_embeded").mkdir()
    (tmp_path / "python_embeded" / "python.exe").write_bytes(b"MZ")
    r = _run(bare_python, comfy / "custom_nodes" / "bonsai-image" / "bonsai.py", "download", "binary", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"run it with ComfyUI's Python: {tmp_path / 'python_embeded' / 'python.exe'} " in r.stderr, r.stderr


def test_wrong_python_without_a_comfyui_says_which_python_to_look_for(bare_python: str, tmp_path: Path) -> None:
    r = _run(bare_python, REPO_ROOT / "bonsai.py", "download", "ternary", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "has no huggingface_hub" in r.stderr and "venv" in r.stderr and "python_embeded" in r.stderr, r.stderr


def test_help_shows_how_the_script_is_run(tmp_path: Path) -> None:
    comfy = _comfyui_with_pack(tmp_path, venv=False)
    r = _run(sys.executable, comfy / "custom_nodes" / "bonsai-image" / "bonsai.py", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: python custom_nodes/bonsai-image/bonsai.py" in r.stdout and "-m bonsai_core" not in r.stdout, r.stdout
    assert "tune" in r.stdout


def _registry_archive(dest: Path) -> Path:
    """A copy of the pack without what ``.comfyignore`` leaves out of the registry archive."""
    patterns = [p.strip().rstrip("/") for p in (REPO_ROOT / ".comfyignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(REPO_ROOT)
        return {
            n for n in names
            if n.startswith(".") or n == "__pycache__" or any(fnmatch.fnmatch((rel / n).as_posix(), p) for p in patterns)
        }  # fmt: skip

    shutil.copytree(REPO_ROOT, dest, ignore=ignore)
    assert not (dest / "bonsai_tools").exists() and (dest / "kernels").is_dir()
    return dest


def test_tune_runs_from_the_registry_archive(tmp_path: Path) -> None:
    pack = _registry_archive(tmp_path / "pack")
    env = {k: v for k, v in os.environ.items() if k not in ("BONSAI_BACKEND", "PYTHONPATH")}
    env["BONSAI_CACHE_DIR"] = str(tmp_path / "cache")
    args = ("tune", "--device", "cpu", "--shapes", "256x64", "--dtype", "float32", "--variants", "binary", "--m", "3")
    r = _run(sys.executable, pack / "bonsai.py", *args, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert records and all(rec["winner"] in rec["ms"] for rec in records), r.stdout
    assert len(list((tmp_path / "cache").rglob("dispatch.json"))) == 1


def test_python_m_bonsai_core_tune_without_the_kernels_says_where_to_run_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", "bonsai_core", "tune", "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 2 and "bonsai.py tune" in r.stderr, r.stderr


def test_tooling_cli_runs_from_any_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(REPO_ROOT / "bonsai_tools"), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "build-workflows" in r.stdout and "tune" in r.stdout
