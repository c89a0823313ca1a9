"""Kernels are a plain package and backend selection has no import cycle (issue 10 item 2).

* ``kernels/`` imports nothing from ``bonsai_core`` (no ``from ..``, no ``bonsai_core``);
* ``bonsai_core`` never imports ``kernels`` (the consumer registers the backends);
* the modules of ``bonsai_core/dispatch/`` import each other without a cycle, late imports
  inside functions included;
* the entry points import on their own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DISPATCH = REPO / "bonsai_core" / "dispatch"


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import in ``path`` (anywhere in the file): (relative level, module, imported names)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or "", [alias.name for alias in node.names]))
    return out


def test_kernels_import_nothing_from_the_runtime() -> None:
    files = sorted((REPO / "kernels").glob("*.py"))
    assert len(files) >= 6
    bad = [
        (f.name, level, mod)
        for f in files
        for level, mod, _ in imports(f)
        if level >= 2 or mod.split(".")[0] == "bonsai_core" or (level == 0 and mod.split(".")[0] in ("nodes", "bonsai_tools"))
    ]
    assert bad == []


def test_runtime_never_imports_kernels() -> None:
    files = sorted((REPO / "bonsai_core").rglob("*.py"))
    bad = []
    for f in files:
        depth = len(f.relative_to(REPO / "bonsai_core").parts) - 1  # package levels below bonsai_core
        for level, mod, _ in imports(f):
            if level == 0 and mod.split(".")[0] == "kernels":
                bad.append((str(f.relative_to(REPO)), mod))
            if level > depth + 1:  # a relative import that climbs out of bonsai_core
                bad.append((str(f.relative_to(REPO)), "." * level + mod))
    assert bad == []


def test_dispatch_modules_form_no_cycle() -> None:
    modules = {p.stem for p in DISPATCH.glob("*.py")}
    assert {"__init__", "cache", "table", "registry", "rules", "run", "tune"} <= modules
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for level, mod, names in imports(DISPATCH / f"{m}.py"):
            if level != 1:
                continue
            targets = [mod.split(".")[0]] if mod else [n for n in names if n in modules]
            graph[m] |= {t for t in targets if t in modules}
    assert "__init__" not in set().union(*graph.values()), "a dispatch module imports its own package"
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])


def test_modules_import_alone_in_a_fresh_interpreter() -> None:
    # The AST test above covers every edge; these are the entry points a consumer may import
    # first (a module in the middle of the chain, the top one, and a backend on its own).
    names = ["bonsai_core.dispatch.rules", "bonsai_core.dispatch.tune", "kernels.fp8_blockwise"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = {}
    for n in names:
        r = subprocess.run([sys.executable, "-c", f"import {n}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            failed[n] = r.stderr[-800:]
    assert failed == {}
