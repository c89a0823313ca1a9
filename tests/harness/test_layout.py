"""The test tree's import rules: test folders are not packages, and the repository's own packages win.

pytest (prepend import mode) puts each test folder on ``sys.path`` and imports test files by their
bare name, and ``pythonpath = [".", "tests"]`` adds the repository and ``tests/``. So a test folder
named like a package (``tests/kernels``, ``tests/nodes``) must never be what an import finds,
and two test files with one name in different folders would clash."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.locate import REPO

TESTS = REPO / "tests"


def test_the_pack_kernels_are_bonsai_image_kernels() -> None:
    from bonsai_image import kernels

    assert Path(kernels.__file__).resolve() == (REPO / "kernels" / "__init__.py").resolve(), kernels.__file__


def test_top_level_kernels_is_never_the_repository_folder() -> None:
    # transformers imports Hugging Face's "kernels" package; the repository (on sys.path) must not shadow it.
    try:
        spec = importlib.util.find_spec("kernels")
    except ModuleNotFoundError:
        spec = None  # Hugging Face's package is not installed here
    places = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
    inside = [p for p in places if p and Path(p).resolve().is_relative_to(REPO)]
    assert not inside, f"'import kernels' would find {inside}"


def test_test_folders_are_not_packages() -> None:
    # An __init__.py would make pytest import e.g. tests/kernels as the package "kernels".
    offenders = sorted(str(p.relative_to(REPO)) for p in TESTS.glob("*/__init__.py") if p.parent.name != "harness")
    assert not offenders, f"test folders must not be packages (only tests/harness is): {offenders}"


def test_module_names_are_unique_across_test_folders() -> None:
    # Prepend import mode imports every file outside tests/harness under its bare name: one name, one file.
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for p in TESTS.glob("*/*.py"):
        if p.parent.name != "harness" and p.name != "conftest.py":
            seen[p.stem].append(str(p.relative_to(REPO)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test modules with the same name in two folders: {clashes}"


def test_comfyui_top_level_nodes_wins_over_the_pack(comfyui: Any) -> None:
    # The pack has a nodes/ package and the repository is on sys.path; ComfyUI's own nodes.py must be "nodes".
    import nodes

    assert Path(nodes.__file__).resolve() == (comfyui.root / "nodes.py").resolve()
    assert "BonsaiTestCapture" in nodes.NODE_CLASS_MAPPINGS
    assert comfyui.pack("nodes").__name__ != "nodes"
    assert sys.modules["nodes"] is nodes
