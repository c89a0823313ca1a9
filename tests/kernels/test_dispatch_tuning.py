"""Issue 11 item 4: a prompt never waits for a measurement. Selection (backend and backend-internal
variants) reads the tables or the static rules; only the explicit tuning engine measures, and what
it measures is what later selections read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from bonsai_core import dispatch
from bonsai_core.dispatch import registry, tune
from bonsai_core.dispatch.cache import cache_dir
from bonsai_core.dispatch.table import entry_key, get_table
from bonsai_core.packing import PackedWeight

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(dispatch.ENV_BACKEND, raising=False)
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.reload_tables()


class Counted:
    """A candidate implementation that counts how often it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the measuring functions, recorded (they still run)."""
    seen: list[str] = []
    real_time, real_measure = tune.time_candidate, tune.measure_and_record

    def time_candidate(fn, device, **kw):  # noqa: ANN001, ANN202
        seen.append("time_candidate")
        return real_time(fn, device, **kw)

    def measure_and_record(key, candidates, device, **kw):  # noqa: ANN001, ANN202
        seen.append(key)
        return real_measure(key, candidates, device, **kw)

    monkeypatch.setattr(tune, "time_candidate", time_candidate)
    monkeypatch.setattr(tune, "measure_and_record", measure_and_record)
    return seen


def test_variant_choice_on_a_new_shape_runs_no_candidate(measurements: list[str]) -> None:
    weight = tune.synthetic_weight(CPU, 64, 256, 2)
    fast, slow = Counted(), Counted()
    choose = registry.kernel_context().choose
    for m in (1, 1536, 4608, 18432):  # every token bucket is new
        assert choose("dequant", weight, m, torch.bfloat16, {"static-first": fast, "other": slow}, CPU) == "static-first"
    assert fast.calls == 0 and slow.calls == 0  # nothing was timed on the caller's thread
    assert measurements == []


def test_first_calls_at_new_resolutions_never_measure(measurements: list[str]) -> None:
    weight = tune.synthetic_weight(CPU, 48, 256, 1)
    for m in (1, 7, 300, 1536):
        y = dispatch.lowbit_linear(torch.randn(m, 256), weight, state={})
        assert y.shape == (m, 48)
    for m in (1, 1536, 4608, 18432):  # a CUDA selection on a machine with or without a GPU: rules only
        dispatch.select_backend(torch.device("cuda"), torch.bfloat16, 1, m, k=3072, n=9216)
    assert measurements == []
    assert not (cache_dir(CPU) / "dispatch.json").exists()  # nothing was written either


def test_measuring_happens_only_inside_the_tuning_block(measurements: list[str]) -> None:
    weight = tune.synthetic_weight(CPU, 64, 256, 2)
    a, b = Counted(), Counted()
    choose = registry.kernel_context().choose
    with registry.measuring(tune.measure_and_record):
        winner = choose("dequant", weight, 1536, torch.bfloat16, {"a": a, "b": b}, CPU)
    assert winner in ("a", "b") and a.calls == 4 and b.calls == 4  # one warm-up + 3 timed runs each
    assert measurements == [entry_key("dequant", 64, 256, 2, torch.bfloat16, 1536), "time_candidate", "time_candidate"]
    # later (any process: it is on disk) the remembered answer is used, nothing runs
    dispatch.reload_tables()
    assert choose("dequant", weight, 2048, torch.bfloat16, {"a": a, "b": b}, CPU) == winner  # same bucket
    assert a.calls == 4 and b.calls == 4


def test_tune_device_writes_the_table_that_selection_reads(measurements: list[str]) -> None:
    records = tune.tune_device(CPU, [(256, 64)], bits=(1,), ms=(3,), dtype=torch.float32)
    key = entry_key("backend", 64, 256, 1, torch.float32, 4)
    assert [r["key"] for r in records] == [key]
    assert set(records[0]["ms"]) == {"torch", "mlx"}  # the exact backends that run on this machine
    saved = json.loads((cache_dir(CPU) / "dispatch.json").read_text())
    assert saved["entries"][key]["winner"] == records[0]["winner"]
    assert dispatch.select_backend(CPU, torch.float32, 1, 4, k=256, n=64) == records[0]["winner"]
    assert [s for s in measurements if s != "time_candidate"] == [key]


def test_tune_budget_stops_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
        records = tune.tune_device(CPU, [(256, 64), (128, 32)], bits=(1, 2), ms=(4,), dtype=torch.float32, budget_s=0.0)
    assert records == []
    assert any("budget" in r.getMessage() for r in caplog.records)
    assert len(get_table(CPU)) == 0


def test_prewarm_compiles_without_measuring(measurements: list[str]) -> None:
    recs = tune.prewarm([(256, 32)], bits=(2,), ms=(1, 5), device=CPU, dtype=torch.float32)
    assert [(r["m"], r["backend"]) for r in recs] == [(1, "torch"), (5, "torch")]
    assert measurements == []


def test_klein_shapes() -> None:
    assert tune.klein_linear_shapes(naming="bfl") == [(3072, 9216), (3072, 3072), (3072, 18432), (9216, 3072), (3072, 27648), (12288, 3072)]
    assert len(tune.klein_linear_shapes(naming="diffusers")) == 5
    with pytest.raises(ValueError, match="naming"):
        tune.klein_linear_shapes(naming="x")


def test_synthetic_weight_is_a_valid_packed_weight() -> None:
    w = tune.synthetic_weight(CPU, 8, 256, 2)
    assert isinstance(w, PackedWeight) and set(w.dequantize().div(w.scales.float().repeat_interleave(128, 1)).unique().tolist()) <= {-1.0, 0.0, 1.0}
