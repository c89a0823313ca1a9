"""The loaders' folder service (nodes/folders.py): the path guard, the bounded walker, the cached checks.

Runs inside the real ComfyUI (the service registers ``models/bonsai`` with ComfyUI's ``folder_paths``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def folders(comfyui) -> ModuleType:  # noqa: ANN001
    return comfyui.pack("nodes.folders")


REFUSED = [
    "/etc/passwd",
    "../x.safetensors",
    "a/../../b/",
    "..",
    "C:\\Windows\\x",
    "C:relative",
    "\\\\server\\share\\x",
    "a\\..\\..\\b",
    "nul\x00byte",
    "x" * 5000,
    "",
    "   ",
]


@pytest.mark.parametrize("name", REFUSED, ids=range(len(REFUSED)))
def test_guard_refuses_names_that_leave_the_models_folder(folders: ModuleType, name: str) -> None:
    problem = folders.name_problem(name, "snapshot folder", "models/bonsai")
    assert problem is not None and "\n" not in problem and "not a snapshot folder name under models/bonsai" in problem
    with pytest.raises(ValueError) as e:
        folders.locate(("bonsai",), name, "snapshot folder", want_dir=True)
    assert type(e.value) is ValueError  # builtin: ComfyUI shows "ValueError", not this pack's mangled module path
    assert folders.name_problem(None, "x", "y") is not None  # a non-string (e.g. a linked number) too


@pytest.mark.parametrize("name", ["release/", "group/release", "a.b/c..d/file.safetensors", "with space/x"])
def test_guard_accepts_plain_relative_names(folders: ModuleType, name: str) -> None:
    assert folders.name_problem(name, "x", "models/bonsai") is None


def test_locate_missing_is_one_line_naming_the_download_routes(folders: ModuleType, comfyui) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError) as e:
        folders.locate(("bonsai",), "no-such-release/", "snapshot folder", want_dir=True)
    msg = str(e.value)
    assert type(e.value) is FileNotFoundError and "\n" not in msg
    assert "snapshot folder 'no-such-release/' not found" in msg
    assert '"Bonsai Download Model" node' in msg and f"python custom_nodes/{folders.PACK_DIR}/bonsai.py download ternary" in msg
    assert str(comfyui.models_dir / "bonsai") in msg  # the folders searched


def test_walker_survives_link_loops_and_lists_each_folder_once(folders: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.safetensors").write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")  # a -> b -> loop -> a ...
    os.symlink(tmp_path / "a", tmp_path / "again")  # a second link to a folder already listed
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / ".hidden").mkdir()
    entries = folders.walk(tmp_path, max_depth=50)
    # "again" and "a/b/loop" lead to "a", already listed; the dangling link, the FIFO and ".hidden" are no models
    assert [e.rel for e in entries] == ["a", "a/b", "a/b/f.safetensors"]


def test_walker_depth_and_entry_caps(folders: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(8)])
    deep.mkdir(parents=True)
    assert max(e.rel.count("/") + 1 for e in folders.walk(tmp_path, max_depth=3)) == 3
    for i in range(50):
        (tmp_path / f"wide{i:02d}").mkdir()
    monkeypatch.setattr(folders, "MAX_ENTRIES", 20)
    assert len(folders.walk(tmp_path, max_depth=8)) <= 20
    assert folders.walk(tmp_path / "absent") == [] and folders.walk(deep / "..." / "x") == []


def test_walker_skips_folders_it_cannot_read(folders: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked" / "x").mkdir(parents=True)
    (tmp_path / "open" / "y").mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(path):  # noqa: ANN001, ANN202 -- what a folder without read permission does (the tests run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folders.os, "scandir", scandir)
    assert [e.rel for e in folders.walk(tmp_path)] == ["locked", "open", "open/y"]


def test_check_runs_once_per_fingerprint_and_never_raises(folders: ModuleType, tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"one")
    calls: list[Path] = []

    def fn(p: Path) -> str | None:
        calls.append(p)
        return None if p.read_bytes() == b"one" else f"{p}: changed"

    assert folders.check("test-once", f, fn) is None
    assert folders.check("test-once", f, fn) is None
    assert len(calls) == 1  # cached
    f.write_bytes(b"two!")  # other size
    assert folders.check("test-once", f, fn) == f"{f}: changed" and len(calls) == 2
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, touched
    folders.check("test-once", f, fn)
    assert len(calls) == 3

    for exc in (RuntimeError("boom"), MemoryError(), RecursionError("deep"), KeyError("k"), PermissionError(13, "denied")):

        def bad(p: Path, exc: BaseException = exc) -> str | None:
            raise exc

        problem = folders.check(f"test-raise-{type(exc).__name__}", f, bad)
        assert problem is not None and str(f) in problem and "\n" not in problem, problem


def test_folder_fingerprint_sees_files_two_levels_down(folders: ModuleType, tmp_path: Path) -> None:
    pack = tmp_path / "snap" / "transformer-gemlite-int2"
    pack.mkdir(parents=True)
    (pack / "state_dict.pt").write_bytes(b"a" * 10)
    before = folders.fingerprint(tmp_path / "snap")
    (pack / "state_dict.pt").write_bytes(b"a" * 11)
    assert folders.fingerprint(tmp_path / "snap") != before
    assert folders.fingerprint(tmp_path / "gone") == (str(tmp_path / "gone"), "absent")
