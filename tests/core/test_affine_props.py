"""Properties of the one formula for any finite ``(scale, zero)`` pairs, edge values included (0, -0.0,
subnormals, one-ulp neighbours of the Bonsai pair): ``split_affine`` keeps a layer canonical exactly when
every group holds the relation, and either way ``dequantize`` is ``q * scale + zero`` (float64 oracle,
rounded once to float32), through split and fuse too."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bonsai_core.formats.layout import fuse
from bonsai_core.packing import exact_relation, pack_codes, split_affine

EDGE = [0.0, -0.0, 1e-40, -1e-40, 1e-45, 2.0**-126, 0.0123, -0.0123]


@st.composite
def layers(draw: st.DrawFn) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bits = draw(st.sampled_from([1, 2]))
    n, g = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 if bits == 1 else 3, (n, g * 128), dtype=torch.uint8, generator=gen)
    s = torch.rand(n, g, generator=gen) * 0.1
    scale, zero = s * (2 if bits == 1 else 1), -s
    mode = draw(st.sampled_from(["exact", "ulp", "edge"]))
    if mode != "exact":
        r, c = draw(st.integers(0, n - 1)), draw(st.integers(0, g - 1))
        if mode == "ulp":
            scale[r, c] = torch.nextafter(scale[r, c], torch.tensor(1.0))
        else:
            scale[r, c], zero[r, c] = draw(st.sampled_from(EDGE)), draw(st.sampled_from(EDGE))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return bits, q, scale.to(dtype), zero.to(dtype), pack_codes(q, bits)


@settings(max_examples=60, deadline=None)
@given(layers())
def test_split_affine_is_the_formula(layer: tuple) -> None:
    bits, q, scale, zero, codes = layer
    p, off = split_affine(codes, scale, zero, bits)
    ok = exact_relation(scale, zero, bits)
    assert off == int((~ok).sum()) and p.is_affine == (off > 0)
    oracle = (q.double() * scale.double().repeat_interleave(128, 1) + zero.double().repeat_interleave(128, 1)).float()
    got = p.dequantize(torch.float32)
    assert torch.equal(got, oracle)
    for dt in (torch.bfloat16, torch.float16):
        assert torch.equal(p.dequantize(dt), oracle.to(dt))
    # fusing with a canonical neighbour and splitting again keeps every value
    other, _ = split_affine(codes, *p.as_affine().affine(torch.float32), bits)
    fused = fuse([p, other])
    assert torch.equal(fused.dequantize(), torch.cat([oracle, oracle]))
    a, b = fused.split([q.shape[0], q.shape[0]])
    assert torch.equal(a.dequantize(), oracle) and torch.equal(b.dequantize(), oracle)
