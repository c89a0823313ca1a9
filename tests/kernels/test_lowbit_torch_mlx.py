"""torch (reference) and MLX backends against the float64 dequantized reference, both variants,
several shapes and dtypes. Both run on CPU, so CI covers them."""

from __future__ import annotations

import pytest
import torch
from lowbit_helpers import TOL, VARIANTS, assert_close_to_reference, random_packed

from bonsai_core.dispatch import get_backend, lowbit_linear, unavailable_reason
from bonsai_core.packing import PackedWeight

SHAPES = [(128, 256), (384, 128), (256, 640)]  # (K, N): 1, 3 and 2 groups along K
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MS = [1, 7, 64]

# MLX on CPU (mlx 0.32.4) works in the activation dtype, partial sums included: fp32 is as
# exact as the reference (measured worst err/(|x||W|) 3.6e-7), but half types lose about one
# unit of their own precision relative to |x||W| (measured worst 2.4e-3 fp16, 1.7e-2 bf16 over
# K up to 12288). Bounds are those measurements with 2x headroom.
MLX_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3.2e-2}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_backend_matches_reference(variant: str, k: int, n: int, dtype: torch.dtype) -> None:
    bits = VARIANTS[variant]
    codes, scales = random_packed(n, k, bits, seed=k + n)
    for m in MS:
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
        y = lowbit_linear(x, PackedWeight(codes, scales, bits), backend="torch")
        assert y.dtype == dtype and y.shape == (m, n)
        assert_close_to_reference(y, x, codes, scales, bits, TOL[dtype])


def test_torch_backend_fp32_is_bit_exact_on_integers() -> None:
    # With integer activations and power-of-two scales every product and sum is exact in fp32,
    # so any deviation would be a packing/sign bug, not rounding.
    codes, _ = random_packed(32, 256, 2, seed=1)
    scales = torch.full((32, 2), 0.5, dtype=torch.float16)
    x = torch.randint(-4, 5, (5, 256)).float()
    y = lowbit_linear(x, PackedWeight(codes, scales, 2), backend="torch")
    from bonsai_core.packing import dequantize

    assert torch.equal(y, x @ dequantize(codes, scales, 2).T)


mlx_missing = unavailable_reason("mlx", torch.device("cpu"), torch.float32, 2)


@pytest.mark.skipif(mlx_missing is not None, reason=f"MLX unavailable: {mlx_missing}")
class TestMLX:
    @pytest.mark.parametrize("variant", VARIANTS)
    @pytest.mark.parametrize("k,n", SHAPES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_reference(self, variant: str, k: int, n: int, dtype: torch.dtype) -> None:
        bits = VARIANTS[variant]
        codes, scales = random_packed(n, k, bits, seed=k * n)
        state: dict = {}
        for m in MS:
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
            y = lowbit_linear(x, PackedWeight(codes, scales, bits), backend="mlx", state=state)
            assert y.dtype == dtype and y.shape == (m, n)
            assert_close_to_reference(y, x, codes, scales, bits, MLX_TOL[dtype])
        assert "mlx" in state  # prepared MLX weights are reused across calls

    def test_weights_are_a_view_of_canonical_codes(self) -> None:
        import mlx.core as mx

        codes, scales = random_packed(16, 256, 1, seed=3)
        w = get_backend("mlx").matmul  # noqa: F841  (backend import side effects only)
        from bonsai_image.kernels.mlx_backend import mlx_affine, mlx_packed

        packed = mlx_packed(codes)
        s, b = mlx_affine(PackedWeight(codes, scales, 1), torch.float32)
        dense = mx.dequantize(packed, s, b, group_size=128, bits=1)
        from bonsai_core.packing import dequantize

        assert torch.equal(torch.from_dlpack(dense), dequantize(codes, scales, 1))

    def test_state_follows_weight_and_dtype(self) -> None:
        codes, scales = random_packed(8, 128, 2, seed=4)
        state: dict = {}
        x = torch.randn(3, 128)
        lowbit_linear(x, PackedWeight(codes, scales, 2), backend="mlx", state=state)
        lowbit_linear(x.half(), PackedWeight(codes, scales, 2), backend="mlx", state=state)
        assert {torch.float32, torch.float16} <= set(state["mlx"][1])
        codes2, scales2 = random_packed(8, 128, 2, seed=5)
        y2 = lowbit_linear(x, PackedWeight(codes2, scales2, 2), backend="mlx", state=state)  # new tensors -> rebuilt
        assert_close_to_reference(y2, x, codes2, scales2, 2, TOL[torch.float32])
