"""Finding ComfyUI, linking the pack into custom_nodes/, and the loud skip when no ComfyUI exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.locate import PACK_DIR_NAME, REPO, find_comfyui, link_pack


def _fake_checkout(root: Path) -> Path:
    # What find_comfyui recognises a checkout by; nothing here is imported.
    (root / "comfy").mkdir(parents=True)
    for f in ("main.py", "nodes.py", "comfy/sd.py"):
        (root / f).write_text("")
    (root / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    return root


def test_env_var_wins_and_a_bad_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = _fake_checkout(tmp_path / "ComfyUI")
    monkeypatch.setenv("COMFYUI_PATH", str(checkout))
    assert find_comfyui() == (checkout.resolve(), "$COMFYUI_PATH")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root, why = find_comfyui()
    assert root is None
    assert "nowhere (not a ComfyUI checkout)" in why and str(tmp_path / "home" / "comfy" / "ComfyUI") in why


def test_link_is_created_repointed_and_a_real_folder_is_left_alone(tmp_path: Path) -> None:
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    link = link_pack(custom_nodes)
    assert link == custom_nodes / PACK_DIR_NAME and link.is_symlink() and link.resolve() == REPO

    # A link left by another clone is re-pointed to this checkout.
    other = tmp_path / "old_clone"
    other.mkdir()
    link.unlink()
    link.symlink_to(other, target_is_directory=True)
    assert link_pack(custom_nodes).resolve() == REPO
    assert not list(custom_nodes.glob(".*.link")), "the temporary link used for the atomic swap was left behind"

    # A real folder is a user's installed copy: refused, untouched.
    link.unlink()
    link.mkdir()
    (link / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="installed copy"):
        link_pack(custom_nodes)
    assert (link / "keep.txt").read_text() == "mine"


def test_without_comfyui_the_tests_skip_loudly_and_the_status_file_says_why(tmp_path: Path) -> None:
    # A pytest run of its own (its own ComfyUI status), with no checkout to be found.
    status = tmp_path / "status.json"
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path / "no-comfyui"), HOME=str(tmp_path), BONSAI_COMFYUI_STATUS_FILE=str(status))
    cmd = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests/harness/test_harness.py"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ComfyUI integration tests: SKIPPED (no ComfyUI checkout found" in r.stdout
    assert "2 skipped" in r.stdout and "To run them: set COMFYUI_PATH=" in r.stdout
    s = json.loads(status.read_text())
    assert s["ran"] is False and s["outcomes"] == {"skipped": 2}
    assert "no-comfyui (not a ComfyUI checkout)" in s["reason"]
