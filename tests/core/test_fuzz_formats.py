"""Hypothesis fuzzing of safetensors headers (generated objects, mutated and random bytes), of
transformer / text-encoder config.json files, of a GGUF's header bytes (issue 9, items 2 and 7),
and of the tensor fields of torch.save archives -- sizes, strides, offsets and storage records, in
a bare archive and as one layer of a gemlite pack (issue 18, item 5). Each property runs in a fresh
interpreter with its heap capped at 512 MB (bounded_worker.py) and a 2 s limit per example; together
they take a few minutes on CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from bounded_worker import run_bounded


@pytest.mark.parametrize(
    "prop",
    [
        "fuzz_safetensors_headers",
        "fuzz_safetensors_bytes",
        "fuzz_json_configs",
        "fuzz_gguf_bytes",
        "fuzz_pt_tensor_fields",
        "fuzz_gemlite_w_q_fields",
    ],
)
def test_fuzz(prop: str, tmp_path: Path) -> None:
    proc = run_bounded(f"fuzz_formats:{prop}", str(tmp_path), mem_mb=512, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
