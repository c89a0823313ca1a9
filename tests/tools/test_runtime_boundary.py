"""The runtime never imports tooling or ComfyUI: every module of ``bonsai_core/`` and ``kernels/`` is
scanned (AST, so comments and strings do not count, but ``importlib.import_module("...")`` with a
literal name does), and relative imports that climb out of the package are resolved against the
pack root (``from ..nodes import x`` inside ``bonsai_core`` is the pack's ComfyUI ``nodes``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("bonsai_core", "kernels")
# tooling, ComfyUI's own modules, and the pack's ComfyUI-facing package (nodes/ at the pack root)
FORBIDDEN = frozenset({"bonsai_tools", "comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server"})
_DYNAMIC = frozenset({"import_module", "__import__"})


def _package_of(path: Path) -> list[str]:
    """Package parts of a module file relative to the repository root (``bonsai_core/formats/x.py`` -> [bonsai_core, formats])."""
    return list(path.relative_to(REPO).parts[:-1])  # an __init__.py belongs to its folder's package too


def imported_names(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, a module of ``package``.

    A relative import that climbs above the top-level package resolves from the pack root, which is how
    ComfyUI loads the pack (the root is itself a package there)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = node.level - 1
                parent = package[: len(package) - up] if up <= len(package) else []
                base = ".".join([*parent, *([node.module] if node.module else [])])
            # ``from .. import nodes`` names modules in the alias list
            names = [base] if node.module else [f"{base}.{a.name}".lstrip(".") for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in _DYNAMIC and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                if not node.args[0].value.startswith("."):  # relative names are the package's own modules
                    out.append((node.lineno, node.args[0].value))
    return out


def violations(source: str, package: list[str]) -> list[str]:
    return [f"line {line}: imports {name}" for line, name in imported_names(source, package) if name.split(".")[0] in FORBIDDEN]


def _runtime_modules() -> list[Path]:
    return sorted(p for pkg in RUNTIME_PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_the_scan_sees_the_runtime() -> None:
    files = _runtime_modules()
    assert len(files) > 20 and any(p.name == "cli.py" for p in files) and any(p.parent.name == "kernels" for p in files)


@pytest.mark.parametrize("path", _runtime_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_module_imports_no_tooling_and_no_comfyui(path: Path) -> None:
    found = violations(path.read_text(encoding="utf-8"), _package_of(path))
    assert not found, f"{path.relative_to(REPO)} " + "; ".join(found)


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("import comfy.sd", ["bonsai_core"], ["line 1: imports comfy.sd"]),
        ("from bonsai_tools.synth import make_fixture", ["bonsai_core"], ["line 1: imports bonsai_tools.synth"]),
        ("def f():\n    import folder_paths", ["kernels"], ["line 2: imports folder_paths"]),
        ("from ..nodes import ops", ["bonsai_core"], ["line 1: imports nodes"]),
        ("from .. import nodes", ["bonsai_core"], ["line 1: imports nodes"]),
        ("from ... import server", ["bonsai_core", "formats"], ["line 1: imports server"]),
        ("import importlib\nimportlib.import_module('comfy_api.latest')", ["bonsai_core"], ["line 2: imports comfy_api.latest"]),
        ("from comfy_api.latest import io", ["kernels"], ["line 1: imports comfy_api.latest"]),
        # allowed: the package's own modules, torch, and names that only look alike
        ("from .nodes_table import x\nfrom ..kernels import base\nimport torch", ["bonsai_core", "formats"], []),
        ("import importlib\nimportlib.import_module('.gemlite', __package__)", ["bonsai_core", "formats"], []),
        ("# import comfy\ns = 'from comfy import sd'\nimport comfyui_version_helper", ["bonsai_core"], []),
    ],
)
def test_the_scanner_catches_each_kind_of_import(source: str, package: list[str], expected: list[str]) -> None:
    assert violations(source, package) == expected
