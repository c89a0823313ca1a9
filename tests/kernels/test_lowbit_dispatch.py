"""Backend selection: explicit argument > $BONSAI_BACKEND > measured table > rules file > static
rules; unavailable backends fall back to torch with one warning; nothing crashes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lowbit_helpers import TOL, assert_close_to_reference, random_packed

from bonsai_core import dispatch
from bonsai_core.dispatch import lowbit_linear, rules, select_backend
from bonsai_core.dispatch.cache import cache_dir
from bonsai_core.dispatch.registry import forget_availability
from bonsai_core.dispatch.table import TABLE_VERSION, device_tag, entry_key
from bonsai_core.packing import PackedWeight
from bonsai_image import kernels

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(dispatch.ENV_BACKEND, raising=False)
    monkeypatch.setenv("BONSAI_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.reload_tables()
    forget_availability()


def write_table(device: torch.device, entries: dict[str, str]) -> None:
    path = cache_dir(device) / "dispatch.json"
    data = {"version": TABLE_VERSION, "device": device_tag(device), "entries": {k: {"winner": v, "ms": {}} for k, v in entries.items()}}
    path.write_text(json.dumps(data))
    dispatch.reload_tables()


def test_registry_is_what_the_consumer_registered() -> None:
    assert {"torch", "triton_dequant", "gemlite", "mlx", "fp8"} <= set(dispatch.backend_names())
    assert set(dispatch.backend_names()) == set(kernels.BACKENDS)
    assert all(callable(f) for f in kernels.BACKENDS.values())


def test_cpu_defaults_to_torch() -> None:
    for m in (1, 16, 4096):
        assert select_backend(CPU, torch.bfloat16, 1, m) == "torch"


def test_explicit_argument_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_backend(CPU, torch.float32, 2, 8, "mlx") == "mlx"
    monkeypatch.setenv(dispatch.ENV_BACKEND, "mlx")
    assert select_backend(CPU, torch.float32, 2, 8) == "mlx"
    assert select_backend(CPU, torch.float32, 2, 8, "torch") == "torch"  # argument beats env


def test_unknown_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backend 'cublas'"):
        select_backend(CPU, torch.float32, 2, 8, "cublas")
    monkeypatch.setenv(dispatch.ENV_BACKEND, "nope")
    with pytest.raises(ValueError, match="BONSAI_BACKEND"):
        select_backend(CPU, torch.float32, 2, 8)


def test_unavailable_backend_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    codes, scales = random_packed(16, 256, 1)
    x = torch.randn(4, 256)
    with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
        for _ in range(3):
            y = lowbit_linear(x, PackedWeight(codes, scales, 1), backend="gemlite")  # gemlite needs CUDA
    assert_close_to_reference(y, x, codes, scales, 1, TOL[torch.float32])
    warnings = [r for r in caplog.records if "gemlite" in r.getMessage()]
    assert len(warnings) == 1
    assert "CUDA" in warnings[0].getMessage() and "'torch'" in warnings[0].getMessage()


def test_cuda_without_usable_gpu_uses_torch_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    # On this machine torch has no usable CUDA device, so the static rules' CUDA choice is
    # unavailable: the real check runs (no mocks) and the answer must be torch plus a reason.
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the gpu tests")
    with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
        assert select_backend(torch.device("cuda"), torch.float16, 2, 1) == "torch"
        assert select_backend(torch.device("cuda"), torch.float16, 2, 4096) == "torch"
    assert sum("triton_dequant" in r.getMessage() for r in caplog.records) == 1


def test_static_rules_never_try_gemlite_or_fp8_unasked(caplog: pytest.LogCaptureFixture) -> None:
    # measured on the H100: the exact dequant + cuBLAS path beat gemlite at every token count,
    # and FP8 is never chosen under plain "auto"
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
        for m in (1, 16, 64, 1536, 4608, 18432):
            assert rules.static_choice(cuda, torch.bfloat16, 1, m) in ("triton_dequant", "torch")
    assert not [r for r in caplog.records if "gemlite" in r.getMessage() or "fp8" in r.getMessage()]
    # auto-fp8 asks for the rowwise FP8 path at every size (fastest Bonsai path measured on the H200)
    assert rules.FP8_BACKEND == "fp8_rowwise"
    for m in (1536, 4608):
        with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
            got = rules.static_choice(cuda, torch.bfloat16, 1, m, allow_fp8=True)
        assert got == "fp8_rowwise" or any("'fp8_rowwise'" in r.getMessage() for r in caplog.records)


def test_mps_prefers_mlx_when_importable() -> None:
    reason = dispatch.unavailable_reason("mlx", torch.device("mps"), torch.float16, 1)
    expected = "mlx" if reason is None else "torch"
    assert select_backend(torch.device("mps"), torch.float16, 1, 4096) == expected


def test_measured_table_is_consulted_per_shape_and_token_bucket() -> None:
    write_table(CPU, {entry_key("backend", 16, 256, 1, torch.float32, 4): "mlx"})
    assert select_backend(CPU, torch.float32, 1, 4, k=256, n=16) == "mlx"
    assert select_backend(CPU, torch.float32, 1, 3, k=256, n=16) == "mlx"  # same bucket (4)
    assert select_backend(CPU, torch.float32, 1, 64, k=256, n=16) == "torch"  # other bucket: static rules
    assert select_backend(CPU, torch.float32, 1, 4, k=128, n=16) == "torch"  # other shape
    assert select_backend(CPU, torch.float32, 1, 4, k=256, n=16, requested="torch") == "torch"  # explicit wins


def test_table_entry_naming_an_unavailable_or_inexact_backend_is_skipped() -> None:
    write_table(
        CPU,
        {
            entry_key("backend", 16, 256, 1, torch.float32, 4): "gemlite",  # cannot run on CPU
            entry_key("backend", 16, 256, 1, torch.float32, 8): "fp8",  # not exact: never under plain auto
        },
    )
    assert select_backend(CPU, torch.float32, 1, 4, k=256, n=16) == "torch"
    assert select_backend(CPU, torch.float32, 1, 8, k=256, n=16) == "torch"


def test_rules_file_in_the_cache_dir() -> None:
    rules_json = {"rules": [{"backend": "mlx", "bits": 2, "dtype": "float16", "m_max": 32}, {"backend": "gemlite", "m_max": 10**9}]}
    (cache_dir(CPU) / "dispatch-rules.json").write_text(json.dumps(rules_json))
    dispatch.reload_tables()
    assert select_backend(CPU, torch.float16, 2, 32) == "mlx"
    assert select_backend(CPU, torch.float16, 2, 33) == "torch"  # gemlite rule matches but cannot run on CPU
    assert select_backend(CPU, torch.float32, 2, 1) == "torch"


def test_corrupt_rules_file_and_table_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    (cache_dir(CPU) / "dispatch-rules.json").write_text("{not json")
    (cache_dir(CPU) / "dispatch.json").write_text("[1, 2")
    dispatch.reload_tables()
    with caplog.at_level(logging.WARNING):
        assert select_backend(CPU, torch.float16, 2, 1, k=256, n=16) == "torch"
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2


def test_importing_backends_without_optional_packages_never_fails() -> None:
    # gemlite is not installed here (CPU CI); the module must still import and report why.
    from bonsai_image.kernels import gemlite_backend  # noqa: F401

    reason = dispatch.unavailable_reason("gemlite", CPU, torch.float16, 1)
    assert reason is not None and "CUDA" in reason


def test_nothing_registered_is_a_clear_error() -> None:
    from bonsai_core.dispatch import registry

    saved = dict(registry._factories)
    registry._factories.clear()
    try:
        with pytest.raises(RuntimeError, match="register_backends"):
            dispatch.get_backend("torch")
    finally:
        dispatch.register_backends(saved)


class _FailsFirst:
    """A backend whose kernels cannot run on this machine (raises like a Triton compile error)."""

    name = "broken"
    exact = True

    def __init__(self, context: object) -> None:
        self.calls = 0
        self.fail = True

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        return None

    def matmul(self, x2d: torch.Tensor, weight: PackedWeight, state: dict) -> torch.Tensor:
        self.calls += 1
        if self.fail:
            raise RuntimeError("no kernel image for this GPU")
        return torch.nn.functional.linear(x2d, weight.dequantize(x2d.dtype))


def test_a_backend_whose_first_call_fails_is_replaced_once_and_for_all(caplog: pytest.LogCaptureFixture) -> None:
    from bonsai_core.dispatch import registry

    dispatch.register_backends({"broken": _FailsFirst})
    try:
        codes, scales = random_packed(16, 256, 2)
        w = PackedWeight(codes, scales, 2)
        x = torch.randn(3, 256)
        with caplog.at_level(logging.WARNING, logger="bonsai_core.dispatch"):
            y = lowbit_linear(x, w, backend="broken", state={})  # the prompt goes on, on the reference backend
            y2 = lowbit_linear(x, w, backend="broken", state={})
        assert torch.equal(y, lowbit_linear(x, w, backend="torch")) and torch.equal(y, y2)
        assert dispatch.get_backend("broken").calls == 1  # not tried again
        assert select_backend(CPU, torch.float32, 2, 3, "broken") == "torch"
        msgs = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
        assert len(msgs) == 1 and "no kernel image" in msgs[0]
    finally:
        registry._factories.pop("broken", None)
        dispatch.reload_tables()


def test_a_failure_after_a_backend_worked_is_a_real_error() -> None:
    from bonsai_core.dispatch import registry

    dispatch.register_backends({"broken": _FailsFirst})
    try:
        backend = dispatch.get_backend("broken")
        backend.fail = False
        codes, scales = random_packed(16, 256, 1)
        w = PackedWeight(codes, scales, 1)
        lowbit_linear(torch.randn(2, 256), w, backend="broken")
        backend.fail = True
        with pytest.raises(RuntimeError, match="no kernel image"):
            lowbit_linear(torch.randn(2, 256), w, backend="broken")
    finally:
        registry._factories.pop("broken", None)
        dispatch.reload_tables()


class _Approximate(_FailsFirst):
    """An inexact backend that runs anywhere (stands for an FP8-activation path)."""

    name = "approx"
    exact = False

    def __init__(self, context: object) -> None:
        super().__init__(context)
        self.fail = False


def test_auto_fp8_may_pick_any_inexact_backend_plain_auto_never() -> None:
    from bonsai_core.dispatch import registry

    dispatch.register_backends({"approx": _Approximate})
    try:
        write_table(
            CPU,
            {
                entry_key("backend", 16, 256, 1, torch.float32, 4): "approx",
                entry_key("backend-fp8", 16, 256, 1, torch.float32, 4): "approx",
            },
        )
        assert select_backend(CPU, torch.float32, 1, 4, k=256, n=16) == "torch"
        assert select_backend(CPU, torch.float32, 1, 4, dispatch.AUTO_FP8, k=256, n=16) == "approx"
        assert "approx" in rules.table_candidates(CPU, torch.float32, 1, True)
        assert "approx" not in rules.table_candidates(CPU, torch.float32, 1, False)
    finally:
        registry._factories.pop("approx", None)
        dispatch.reload_tables()


class _ApproximateResident(_Approximate):
    """An inexact backend that keeps a second copy of every weight (stands for fp8_rowwise_resident)."""

    name = "approx_resident"
    resident = True


def test_resident_backends_are_never_chosen_automatically() -> None:
    """A measured table (the shipped H200 one does) may name a resident backend: auto-fp8 skips it
    (it would add ~1 byte per weight of VRAM), an explicit request still gets it."""
    dispatch.register_backends({"approx": _Approximate, "approx_resident": _ApproximateResident})
    try:
        write_table(CPU, {entry_key("backend-fp8", 16, 256, 1, torch.float32, 4): "approx_resident"})
        assert "approx_resident" not in rules.table_candidates(CPU, torch.float32, 1, True)
        assert select_backend(CPU, torch.float32, 1, 4, dispatch.AUTO_FP8, k=256, n=16) != "approx_resident"
        assert select_backend(CPU, torch.float32, 1, 4, "approx_resident", k=256, n=16) == "approx_resident"
    finally:
        from bonsai_core.dispatch import registry

        registry._factories.pop("approx", None)
        registry._factories.pop("approx_resident", None)
        dispatch.reload_tables()
