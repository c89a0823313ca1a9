"""Per-GPU cache folder, Triton cache redirection, Klein shapes, prewarm and bench-linear (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bonsai_core.dispatch import cache as kernel_cache
from bonsai_core.dispatch.cache import cache_dir, device_tag, ensure_triton_cache, user_cache_root
from bonsai_core.dispatch.tune import klein_linear_shapes, prewarm


def test_cache_root_env_override_and_platform_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path / "c"))
    assert user_cache_root() == tmp_path / "c"
    d = cache_dir("cpu")
    assert d.is_dir() and d.parent == tmp_path / "c" and d.name == device_tag("cpu")
    monkeypatch.delenv("BONSAI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_cache_root() == tmp_path / "xdg" / "bonsai-image"


def test_gemlite_table_is_per_gemlite_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the backend keeps its table in the folder its kernel context names, one file per gemlite version
    from bonsai_image.kernels import gemlite_backend as gb

    dev = torch.device("cuda")
    monkeypatch.setattr(gb, "gemlite_version", lambda: "0.5.1.post1")
    a = gb._AutotuneTable().path(dev, lambda d: tmp_path)
    monkeypatch.setattr(gb, "gemlite_version", lambda: "0.6.0.post2")
    b = gb._AutotuneTable().path(dev, lambda d: tmp_path)
    assert a != b and a is not None and b is not None and a.name == "gemlite-autotune-0.5.1.post1.json" and a.parent == b.parent == tmp_path
    assert gb._AutotuneTable().path(dev, lambda d: None) is None  # no cache folder: nothing persisted


def test_device_tag_is_a_safe_folder_name() -> None:
    tag = device_tag("cpu")
    assert tag.startswith("cpu-torch") and "/" not in tag and " " not in tag


def test_triton_cache_only_set_when_user_has_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_CACHE_DIR", "/users/own/choice")
    assert ensure_triton_cache("cpu") is None and os.environ["TRITON_CACHE_DIR"] == "/users/own/choice"
    monkeypatch.delenv("TRITON_CACHE_DIR")
    path = ensure_triton_cache("cpu")
    assert path is not None and path.is_dir() and os.environ["TRITON_CACHE_DIR"] == str(path)
    assert ensure_triton_cache("cpu") == path  # our own setting may be refreshed


def test_klein_shapes() -> None:
    assert klein_linear_shapes() == [(3072, 3072), (3072, 18432), (9216, 3072), (3072, 27648), (12288, 3072)]
    assert (3072, 9216) in klein_linear_shapes(naming="bfl") and len(klein_linear_shapes(naming="bfl")) == 6
    with pytest.raises(ValueError):
        klein_linear_shapes(naming="gguf")


def test_unreadable_json_is_ignored(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text("{")
    assert kernel_cache.read_json(bad) is None
    assert kernel_cache.read_json(tmp_path / "missing.json") is None


def test_prewarm_on_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BONSAI_BACKEND", raising=False)
    records = prewarm([(256, 128)], bits=(1, 2), ms=(1, 3), device="cpu", dtype=torch.float32)
    assert [(r["bits"], r["m"], r["backend"]) for r in records] == [(1, 1, "torch"), (1, 3, "torch"), (2, 1, "torch"), (2, 3, "torch")]


def test_bench_linear_cli_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), BONSAI_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "bonsai_tools", "bench-linear", "--shapes", "256x128", "--m", "0,2", "--backends", "torch,mlx,gemlite"]
    cmd += ["--iters", "2", "--warmup", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert {(r["backend"], r["variant"]) for r in lines} >= {("dense-bf16", "dense"), ("torch", "binary"), ("torch", "ternary")}
    assert all(r["m"] in (0, 2) and r["k"] == 256 and r["n"] == 128 and r["ms"] >= 0 for r in lines)
    assert "skipping backend gemlite" in proc.stderr  # no CUDA here: skipped with a reason, not a crash
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["meta"]["complete"] and len(doc["rows"]) == len(lines)
    md = out.with_suffix(".md").read_text()
    assert "| 256×128 | 2 |" in md and "auto picks" in md
    torch_rows = [r for r in lines if r["backend"] == "torch" and r["m"] == 2]
    assert all(r["max_rel_err"] < 1e-2 for r in torch_rows)
