"""``dispatch.lowbit_linear`` on a PackedWeight: any leading dims, dtype in == dtype out, and bad
input (wrong dtype, non-contiguous, shape mismatch, empty batch, bad packed weight, device)."""

from __future__ import annotations

import pytest
import torch
from lowbit_helpers import TOL, VARIANTS, assert_close_to_reference, random_packed

from bonsai_core.dispatch import lowbit_linear
from bonsai_core.packing import PackedWeight


def make_weight(bits: int = 2, n: int = 24, k: int = 256) -> PackedWeight:
    codes, scales = random_packed(n, k, bits, seed=bits)
    return PackedWeight(codes, scales, bits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_object_is_packed_only(variant: str) -> None:
    bits = VARIANTS[variant]
    w = make_weight(bits)
    assert w.codes.dtype == torch.uint8 and w.codes.shape == (24, 256 * bits // 8)
    assert (w.out_features, w.in_features, w.group_size) == (24, 256, 128)
    assert w.nbytes == w.codes.nbytes + w.scales.nbytes


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_any_leading_dims_and_dtype_roundtrip(backend: str, dtype: torch.dtype, lead: tuple[int, ...]) -> None:
    w = make_weight()
    x = torch.randn(*lead, 256).to(dtype)
    y = lowbit_linear(x, w, backend=backend, state={})
    assert y.dtype == dtype and y.shape == (*lead, 24)
    tol = TOL[dtype] * (4 if backend == "mlx" else 1)  # MLX CPU half precision: see test_lowbit_torch_mlx
    assert_close_to_reference(y, x, w.codes, w.scales, 2, tol)


def test_wrong_dtype_is_a_type_error() -> None:
    w = make_weight()
    for bad in (torch.ones(2, 256, dtype=torch.int64), torch.ones(2, 256, dtype=torch.uint8), torch.ones(2, 256, dtype=torch.bool)):
        with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
            lowbit_linear(bad, w)
    with pytest.raises(TypeError, match="torch.Tensor"):
        lowbit_linear([[0.0] * 256], w)  # type: ignore[arg-type]


def test_non_contiguous_input_gives_the_contiguous_result() -> None:
    w = make_weight()
    x = torch.randn(256, 6).t()  # [6, 256], stride (1, 6)
    assert not x.is_contiguous()
    assert torch.equal(lowbit_linear(x, w, backend="torch"), lowbit_linear(x.contiguous(), w, backend="torch"))
    sliced = torch.randn(4, 512)[:, ::2]
    assert torch.equal(lowbit_linear(sliced, w, backend="torch"), lowbit_linear(sliced.contiguous(), w, backend="torch"))
    assert torch.equal(lowbit_linear(x, w, backend="mlx", state={}), lowbit_linear(x.contiguous(), w, backend="mlx", state={}))


def test_feature_mismatch_is_a_value_error() -> None:
    w = make_weight()
    with pytest.raises(ValueError, match="input has 255 features .* expects 256"):
        lowbit_linear(torch.randn(3, 255), w)
    with pytest.raises(ValueError, match="expects 256"):
        lowbit_linear(torch.tensor(1.0), w)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_empty_batch(backend: str) -> None:
    w = make_weight()
    for shape in [(0, 256), (2, 0, 256), (0, 3, 256)]:
        y = lowbit_linear(torch.randn(*shape, dtype=torch.bfloat16), w, backend=backend, state={})
        assert y.shape == (*shape[:-1], 24) and y.dtype == torch.bfloat16


def test_bad_packed_weight_is_refused_once_at_construction_and_device_mismatch() -> None:
    codes, scales = random_packed(8, 256, 2)
    with pytest.raises(ValueError, match="bits must be 1"):
        PackedWeight(codes, scales, 3)
    with pytest.raises(ValueError, match="imply K"):
        PackedWeight(codes, scales, 1)  # 2-bit codes read as 1-bit: K disagrees with scales
    with pytest.raises(ValueError, match="uint8"):
        PackedWeight(codes.int(), scales, 2)
    with pytest.raises(ValueError, match="is on meta"):
        lowbit_linear(torch.randn(1, 256).to("meta"), PackedWeight(codes, scales, 2))


def test_state_keeps_prepared_data_between_calls() -> None:
    w = make_weight()
    x = torch.randn(2, 256)
    state: dict = {}
    y = lowbit_linear(x, w, backend="mlx", state=state)
    assert "mlx" in state  # the MLX copy is prepared once per layer
    prepared = state["mlx"]
    assert torch.equal(lowbit_linear(x, w, backend="mlx", state=state), y)
    assert state["mlx"] is prepared
    flipped = PackedWeight(w.codes.flip(0).contiguous(), w.scales.flip(0).contiguous(), 2)
    y2 = lowbit_linear(x, flipped, backend="mlx", state=state)  # other tensors: prepared again, not reused
    assert_close_to_reference(y2, x, flipped.codes, flipped.scales, 2, TOL[torch.float32])
    assert not torch.equal(y2, y)
