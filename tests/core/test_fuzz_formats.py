"""Hypothesis fuzzing of safetensors headers (generated objects, mutated and random bytes) and of
transformer / text-encoder config.json files. Each property runs in a fresh interpreter with its
heap capped at 512 MB (bounded_worker.py) and a 2 s limit per example; the three together take
well under a few minutes on CI. Issue 9, items 2 and 7."""

from __future__ import annotations

from pathlib import Path

import pytest
from bounded_worker import run_bounded


@pytest.mark.parametrize("prop", ["fuzz_safetensors_headers", "fuzz_safetensors_bytes", "fuzz_json_configs", "fuzz_gguf_bytes"])
def test_fuzz(prop: str, tmp_path: Path) -> None:
    proc = run_bounded(f"fuzz_formats:{prop}", str(tmp_path), mem_mb=512, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
