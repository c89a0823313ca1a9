"""Shared by every test folder: the ComfyUI harness fixtures, the ``comfyui`` marker and the status file.

A test needs ComfyUI when it uses the ``comfyui`` fixture (directly or through another fixture) or is
marked ``comfyui``. Without a ComfyUI checkout those tests are skipped with a reason that says how to
enable them, the pytest header says so, and ``.pytest-comfyui-status.json`` (read by ``.ci/run``)
records whether they ran, against which ComfyUI, and their outcomes.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from harness.comfyui import import_comfy_early
from harness.fixtures import comfy_models, comfyui, module_models, shared_models_stay_clean  # noqa: F401  (pytest fixtures)
from harness.locate import find_comfyui
from harness.status import ComfyStatus

from bonsai_tools.pack_import import isolate_pack

# The repository is on sys.path (pythonpath "."): its kernels/ is imported as bonsai_image.kernels, and the
# top-level "kernels" stays Hugging Face's package, which transformers imports (bonsai_tools.pack_import).
isolate_pack()

# pytest may import the repository root's __init__.py (the pack's entry point, which imports comfy_api when it
# can) before any fixture runs. Where ComfyUI is importable already (on PYTHONPATH), its arguments must be
# parsed (--cpu) before that; otherwise nothing of ComfyUI is imported until a test asks for the comfyui
# fixture, so runs of bonsai_core or kernel tests alone do not pay for booting ComfyUI.
if importlib.util.find_spec("comfy_api") is not None:
    import_comfy_early()

_status = ComfyStatus(find_comfyui())


def pytest_report_header(config: pytest.Config) -> str:
    return _status.header()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "comfyui" in getattr(item, "fixturenames", ()) or item.get_closest_marker("comfyui") is not None:
            item.add_marker(pytest.mark.comfyui)
            if _status.root is None:
                item.add_marker(pytest.mark.skip(reason=_status.skip_reason()))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "comfyui" in report.keywords and (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
        _status.record(report.outcome)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    line = _status.line()
    if line is not None:
        text, warn = line
        terminalreporter.write_line(text, yellow=warn, bold=warn)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.write()
