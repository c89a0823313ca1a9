"""``python -m bonsai_tools tune``: the explicit measuring command the runtime points users at writes
the per-GPU dispatch table that selection reads; ``--prewarm`` compiles and measures nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tune(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), BONSAI_CACHE_DIR=str(cache))
    env.pop("BONSAI_BACKEND", None)
    cmd = [sys.executable, "-m", "bonsai_tools", "tune", "--device", "cpu", "--shapes", "256x64", "--dtype", "float32", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_tune_writes_the_table_selection_reads(tmp_path: Path) -> None:
    r = _tune(tmp_path, "--variants", "binary", "--m", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert records and all(rec["winner"] in rec["ms"] and "|N64|K256|b1|" in rec["key"] for rec in records)
    tables = list(tmp_path.rglob("dispatch.json"))
    assert len(tables) == 1 and str(tables[0]) in r.stdout
    stored = json.loads(tables[0].read_text())["entries"]
    assert {rec["key"]: rec["winner"] for rec in records} == {k: v["winner"] for k, v in stored.items()}


def test_prewarm_measures_nothing(tmp_path: Path) -> None:
    r = _tune(tmp_path, "--prewarm", "--m", "1,5")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert {(rec["bits"], rec["m"]) for rec in records} == {(1, 1), (1, 5), (2, 1), (2, 5)}
    assert "compiled 4 configurations" in r.stdout
    assert not list(tmp_path.rglob("dispatch.json"))
