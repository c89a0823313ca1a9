"""HQQ linear entries come from a pickle: every field may be any type the weights-only unpickler
rebuilds. Whatever they hold, reading one ends in a Packed4Bit or one BonsaiFormatError naming the
file and the module -- never a TypeError, IndexError or RuntimeError (property-based)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.te_formats.hqq import _hqq_linear
from bonsai_core.te_formats.packed import Packed4Bit

N, K, GS = 8, 128, 64
GOOD: dict[str, Any] = {
    "W_q": torch.zeros(N * K // GS // 2, GS, dtype=torch.uint8),
    "scale": torch.ones(N * K // GS, 1, dtype=torch.float16),
    "zero": torch.full((N * K // GS, 1), 8.0, dtype=torch.float16),
    "nbits": 4,
    "group_size": GS,
    "axis": 1,
    "shape": (N, K),
    "packing": "4bit_u8",
    "view_as_float": False,
    "quant_scale": False,
    "quant_zero": False,
}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 40), max_value=1 << 40),
    st.floats(),
    st.text(max_size=10),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=4),
    st.sampled_from(
        [
            torch.tensor(float("nan")),
            torch.tensor([4, 4]),
            torch.tensor(4),
            torch.tensor([1.5]),
            torch.zeros(3, 3),
            torch.tensor(list(b"4bit_u8"), dtype=torch.uint8),
            torch.zeros(0),
            torch.zeros(2, 64, dtype=torch.float16),
        ]
    ),
)


@settings(max_examples=300, deadline=2000, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD) + ["zero_scale", "bias"]), values, max_size=3))
def test_any_hqq_entry_is_read_or_refused_cleanly(changes: dict[str, Any]) -> None:
    entry = {**GOOD, **changes}
    try:
        p = _hqq_linear(entry, Path("qmodel.pt"), "model.layers.0.mlp.up_proj")
    except BonsaiFormatError as e:
        assert e.path == "qmodel.pt" and e.tensor == "model.layers.0.mlp.up_proj", str(e)
        assert "\n" not in str(e)
        return
    assert isinstance(p, Packed4Bit) and p.shape == (N, K)


def test_the_unmodified_entry_reads() -> None:
    p = _hqq_linear(dict(GOOD), Path("qmodel.pt"), "m")
    assert p.shape == (N, K) and p.group_size == GS
