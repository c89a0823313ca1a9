"""BonsaiLinear: packed buffers only, any leading dims, dtype in == dtype out, state handling,
and bad input (wrong dtype, non-contiguous, shape mismatch, empty batch)."""

from __future__ import annotations

import pytest
import torch
from lowbit_helpers import TOL, VARIANTS, assert_close_to_reference, random_packed

from bonsai_core.dispatch import lowbit_linear
from bonsai_core.linear import BonsaiLinear
from bonsai_core.packing import PackedWeight


def make_layer(bits: int = 2, n: int = 24, k: int = 256, backend: str = "auto") -> BonsaiLinear:
    codes, scales = random_packed(n, k, bits, seed=bits)
    return BonsaiLinear.from_packed(PackedWeight(codes, scales, bits), backend=backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_holds_only_packed_buffers(variant: str) -> None:
    layer = make_layer(VARIANTS[variant])
    assert list(layer.state_dict()) == ["codes", "scales"]
    assert layer.codes.dtype == torch.uint8 and layer.codes.shape == (24, 256 * VARIANTS[variant] // 8)
    assert not list(layer.parameters())
    assert layer.variant == variant and "g128" in repr(layer)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_any_leading_dims_and_dtype_roundtrip(backend: str, dtype: torch.dtype, lead: tuple[int, ...]) -> None:
    layer = make_layer(backend=backend)
    x = torch.randn(*lead, 256).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (*lead, 24)
    tol = TOL[dtype] * (4 if backend == "mlx" else 1)  # MLX CPU half precision: see test_lowbit_torch_mlx
    assert_close_to_reference(y, x, layer.codes, layer.scales, 2, tol)


def test_wrong_dtype_is_a_type_error() -> None:
    layer = make_layer()
    for bad in (torch.ones(2, 256, dtype=torch.int64), torch.ones(2, 256, dtype=torch.uint8), torch.ones(2, 256, dtype=torch.bool)):
        with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
            layer(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 256])  # type: ignore[arg-type]


def test_non_contiguous_input_gives_the_contiguous_result() -> None:
    layer = make_layer(backend="torch")
    base = torch.randn(256, 6)
    x = base.t()  # [6, 256], stride (1, 6)
    assert not x.is_contiguous()
    assert torch.equal(layer(x), layer(x.contiguous()))
    sliced = torch.randn(4, 512)[:, ::2]
    assert torch.equal(layer(sliced), layer(sliced.contiguous()))
    mlx = make_layer(backend="mlx")
    assert torch.equal(mlx(x), mlx(x.contiguous()))


def test_feature_mismatch_is_a_value_error() -> None:
    layer = make_layer()
    with pytest.raises(ValueError, match="input has 255 features .* expects 256"):
        layer(torch.randn(3, 255))
    with pytest.raises(ValueError, match="expects 256"):
        layer(torch.tensor(1.0))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_empty_batch(backend: str) -> None:
    layer = make_layer(backend=backend)
    for shape in [(0, 256), (2, 0, 256), (0, 3, 256)]:
        y = layer(torch.randn(*shape, dtype=torch.bfloat16))
        assert y.shape == (*shape[:-1], 24) and y.dtype == torch.bfloat16


def test_bad_packed_weight_and_device_mismatch() -> None:
    codes, scales = random_packed(8, 256, 2)
    x = torch.randn(1, 256)
    with pytest.raises(ValueError, match="bits must be 1"):
        lowbit_linear(x, codes, scales, 3)
    with pytest.raises(ValueError, match="imply K"):
        lowbit_linear(x, codes, scales, 1)  # 2-bit codes read as 1-bit: K disagrees with scales
    with pytest.raises(ValueError, match="uint8 codes"):
        lowbit_linear(x, codes.int(), scales, 2)
    with pytest.raises(ValueError, match="is on meta"):
        lowbit_linear(x.to("meta"), codes, scales, 2)
    with pytest.raises(ValueError, match="multiple of 128"):
        BonsaiLinear(100, 8, 2)


def test_state_is_dropped_on_move_and_load_and_scales_keep_dtype() -> None:
    layer = make_layer(backend="mlx")
    x = torch.randn(2, 256)
    y = layer(x)
    assert "mlx" in layer.state
    layer.to(torch.bfloat16)  # a model-wide cast must not round the fp16 scales
    assert layer.state == {} and layer.scales.dtype == torch.float16 and layer.codes.dtype == torch.uint8
    layer(x)
    assert layer.state
    layer.to("cpu")
    assert layer.state == {}
    layer(x)
    other = make_layer(bits=2, backend="mlx")
    other.codes = other.codes.flip(0).contiguous()
    layer.load_state_dict(other.state_dict())
    assert layer.state == {}
    assert_close_to_reference(layer(x), x, other.codes, other.scales, 2, TOL[torch.float32])
    assert not torch.equal(layer(x), y)


def test_constructor_then_load_matches_from_packed() -> None:
    src = make_layer(bits=1)
    fresh = BonsaiLinear(256, 24, 1)
    fresh.load_state_dict(src.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(fresh(x), src(x))
    assert torch.equal(fresh.dequantize(), src.packed().dequantize())
