"""The GPU LoRA benchmark script runs (tiny CPU smoke mode) and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]


def test_bench_lora_smoke(tmp_path: Path, comfyui) -> None:  # comfyui: skips cleanly when ComfyUI is absent
    cmd = [sys.executable, "-m", "bonsai_tools", "bench-lora", "--size", "tiny", "--ranks", "4", "8", "--resolution", "64"]
    cmd += ["--txt-tokens", "8", "--warmup", "0", "--reps", "1", "--comfyui", str(comfyui.root), "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["rank"] for row in report["rows"]] == [4, 8]
    assert all(row["finite"] and row["output_rel_change"] > 0 for row in report["rows"])
    # fp32 on CPU: rank * (out + in) * 4 bytes over the 12 packed layers = 2 x the bf16 factors in the file
    # (the file also holds one 4-byte alpha per layer)
    assert all(row["lora_resident_bytes"] == 2 * (row["lora_file_bytes"] - 4 * 12) for row in report["rows"])
    assert report["removal_restores_base_exactly"] is True
    assert (tmp_path / "bench-lora.md").is_file() and "| LoRA rank |" in r.stdout
