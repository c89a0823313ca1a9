"""ComfyUI integration tests: a real ComfyUI in this process (see tests/comfyui_env.py).

Without a ComfyUI checkout every test here is skipped with a reason that says how to enable them,
the pytest header says so, and ``.pytest-comfyui-status.json`` (read by ``.ci/run``) records it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, for comfyui_env

import comfyui_env  # noqa: E402
from comfyui_env import comfy_models, comfyui, module_models, shared_models_stay_clean  # noqa: E402,F401  (pytest fixtures)

STATUS_FILE = comfyui_env.REPO / ".pytest-comfyui-status.json"
_HERE = Path(__file__).resolve().parent
_outcomes: Counter[str] = Counter()
_found = comfyui_env.find_comfyui()


def pytest_report_header(config: pytest.Config) -> str:
    root, how = _found
    if root is None:
        return f"ComfyUI integration tests: SKIPPED ({how}). To run them: {comfyui_env.ENABLE_HINT}"
    return f"ComfyUI integration tests: ComfyUI {comfyui_env.comfyui_version(root)} at {root} (found via {how})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root, how = _found
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)
            if root is None:
                item.add_marker(
                    pytest.mark.skip(reason=f"ComfyUI integration tests SKIPPED: {how}. To run them: {comfyui_env.ENABLE_HINT}")
                )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    status = _status()
    if status.get("ran"):
        terminalreporter.write_line(
            f"ComfyUI integration tests ran against ComfyUI {status['version']} at {status['path']}: {status['summary']}"
        )
    elif _outcomes:
        terminalreporter.write_line(f"ComfyUI integration tests SKIPPED: {status['reason']}", yellow=True, bold=True)


def _status() -> dict[str, Any]:
    root, how = _found
    s = comfyui_env.session_status()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(_outcomes.items()))
    out: dict[str, Any] = {
        "ran": bool(s.get("ran")),
        "version": s.get("version") or (comfyui_env.comfyui_version(root) if root else None),
        "path": s.get("path") or (str(root) if root else None),
        "summary": summary,
        "outcomes": dict(_outcomes),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not out["ran"]:
        out["reason"] = s.get("reason") or (f"{how}; {comfyui_env.ENABLE_HINT}" if root is None else "no ComfyUI test was selected")
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes and not comfyui_env.session_status():
        return  # nothing from tests/comfy ran in this session (e.g. -k deselected it): keep the previous file
    tmp = STATUS_FILE.with_suffix(".json.partial")
    tmp.write_text(json.dumps(_status(), indent=2) + "\n")
    tmp.replace(STATUS_FILE)
