"""The gemlite layer this pack writes (file exporter) is what gemlite's own ``pack()`` writes.

gemlite cannot be imported without a CUDA driver, so the reference values below were produced by
``GemLiteLinearTriton(W_nbits=b, group_size=128, input_dtype=FP16, output_dtype=FP16,
acc_dtype=FP32).pack(q, scale, z, fma_mode=True, packing_bitwidth=8)`` of gemlite 0.5.1.post1 and
0.6.0.post2 (the two versions the pack supports) on the same weights, with fp32 affine scales as
the released packs store them; tests/kernels/test_lowbit_gemlite.py checks the runtime layer
against a live gemlite on the GPU. In particular gemlite 0.6 writes ``meta_scale = 0.0`` for these
integer layers (its kernels read it only for NVFP4); this pack's exporter used to write 1.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lowbit_helpers import VARIANTS, random_packed

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats.gemlite import gemlite_layer, packed_from_gemlite
from bonsai_core.packing import PackedWeight

# gemlite metadata slots for these layers, as pack() wrote them: scaled_activations, W_nbits,
# group_size, unpack_mask, elements_per_sample, input FP16(1), output FP16(1), acc FP32(0),
# meta FP32(0) (fp32 scales), channel_scale_mode 0, W_group_mode 4 (q * scale + zero), contiguous.
GEMLITE_PACK_METADATA = {1: [0, 1, 128, 1, 8, 1, 1, 0, 0, 0, 4, 1], 2: [0, 2, 128, 3, 4, 1, 1, 0, 0, 0, 4, 1]}
GEMLITE_06_META_SCALE = 0.0


@pytest.mark.parametrize("version", ["0.5.1.post1", "0.6.0.post2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_layer_equals_gemlites_own_pack(variant: str, version: str) -> None:
    bits = VARIANTS[variant]
    codes, scales = random_packed(40, 384, bits, seed=7)
    w = PackedWeight(codes, scales, bits)
    layer = gemlite_layer(w, gemlite_version=version)
    expected_keys = {"W_q", "scales", "zeros", "metadata", "orig_shape"} | ({"meta_scale"} if version.startswith("0.6") else set())
    assert set(layer) == expected_keys
    assert layer["metadata"].dtype == torch.int32 and layer["metadata"].tolist() == GEMLITE_PACK_METADATA[bits]
    assert layer["orig_shape"].tolist() == [40, 384]
    assert torch.equal(layer["W_q"], codes.t().contiguous())  # pack() over K with 8-bit words is codes.T
    s = scales.float().t()
    assert torch.equal(layer["scales"], s * (2 if bits == 1 else 1)) and torch.equal(layer["zeros"], -s)
    if "meta_scale" in layer:
        assert layer["meta_scale"].dtype == torch.float32 and layer["meta_scale"].shape == ()
        assert float(layer["meta_scale"]) == GEMLITE_06_META_SCALE


@pytest.mark.parametrize("meta_scale", [0.0, 1.0])  # what gemlite 0.6 writes; what older exports of this pack wrote
def test_reader_accepts_both_neutral_meta_scales(meta_scale: float) -> None:
    codes, scales = random_packed(16, 256, 2, seed=3)
    leaves = gemlite_layer(PackedWeight(codes, scales, 2), gemlite_version="0.6")
    leaves["meta_scale"] = torch.tensor(meta_scale)
    back = packed_from_gemlite(Path("state_dict.pt"), "m", leaves, 2)
    assert torch.equal(back.codes, codes) and torch.equal(back.dequantize(), PackedWeight(codes, scales, 2).dequantize())


@pytest.mark.parametrize("bad", [torch.tensor(0.5), torch.tensor([0.0, 0.0]), torch.tensor(0, dtype=torch.int32)])
def test_reader_refuses_a_scaled_meta_scale(bad: torch.Tensor) -> None:
    codes, scales = random_packed(16, 256, 1, seed=4)
    leaves = gemlite_layer(PackedWeight(codes, scales, 1), gemlite_version="0.6")
    leaves["meta_scale"] = bad
    with pytest.raises(BonsaiFormatError, match="not neutral") as ei:
        packed_from_gemlite(Path("state_dict.pt"), "m", leaves, 1)
    assert ei.value.tensor == "m.meta_scale"
