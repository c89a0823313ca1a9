"""The ComfyUI status of a test session: whether the integration tests ran, against which ComfyUI, with what outcomes.

``tests/conftest.py`` feeds it from pytest's hooks; :meth:`ComfyStatus.write` leaves
``.pytest-comfyui-status.json`` at the repository root, which ``.ci/run`` prints."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .comfyui import session_status
from .locate import ENABLE_HINT, REPO, comfyui_version

# .ci/run reads the default; a test of the harness itself points its inner pytest run elsewhere.
STATUS_FILE = Path(os.environ.get("BONSAI_COMFYUI_STATUS_FILE") or REPO / ".pytest-comfyui-status.json")


class ComfyStatus:
    """Outcomes of the tests marked ``comfyui`` and what the ComfyUI session reported."""

    def __init__(self, found: tuple[Path | None, str]) -> None:
        self.root, self.how = found
        self.outcomes: Counter[str] = Counter()

    def header(self) -> str:
        if self.root is None:
            return f"ComfyUI integration tests: SKIPPED ({self.how}). To run them: {ENABLE_HINT}"
        return f"ComfyUI integration tests: ComfyUI {comfyui_version(self.root)} at {self.root} (found via {self.how})"

    def skip_reason(self) -> str:
        return f"ComfyUI integration tests SKIPPED: {self.how}. To run them: {ENABLE_HINT}"

    def record(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def summary(self) -> dict[str, Any]:
        s = session_status()
        out: dict[str, Any] = {
            "ran": bool(s.get("ran")),
            "version": s.get("version") or (comfyui_version(self.root) if self.root else None),
            "path": s.get("path") or (str(self.root) if self.root else None),
            "summary": ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())),
            "outcomes": dict(self.outcomes),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if not out["ran"]:
            out["reason"] = s.get("reason") or (f"{self.how}; {ENABLE_HINT}" if self.root is None else "no ComfyUI test was selected")
        return out

    def line(self) -> tuple[str, bool] | None:
        """The terminal summary line and whether it is a warning (skipped), or None when no ComfyUI test was selected."""
        status = self.summary()
        if status.get("ran"):
            return f"ComfyUI integration tests ran against ComfyUI {status['version']} at {status['path']}: {status['summary']}", False
        if self.outcomes:
            return f"ComfyUI integration tests SKIPPED: {status['reason']}", True
        return None

    def write(self) -> None:
        if not self.outcomes and not session_status():
            return  # no ComfyUI test ran in this session (e.g. -k deselected them): keep the previous file
        tmp = STATUS_FILE.with_suffix(".json.partial")
        tmp.write_text(json.dumps(self.summary(), indent=2) + "\n")
        tmp.replace(STATUS_FILE)
