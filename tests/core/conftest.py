"""Session-scoped tiny fixtures in every released layout (tests/core)."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_helpers import FORMATS, SEED, VARIANTS, fixture_path

from bonsai_core.formats import FORMATS as FORMATS_BY_NAME
from bonsai_tools.synth import make_fixture


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(variant, format) -> path of a tiny fixture written by ``make_fixture`` (seed SEED).
    Ternary GGUF does not exist (Q1_0 is binary), so that pair is absent."""
    root = tmp_path_factory.mktemp("tiny")
    out: dict[tuple[str, str], Path] = {}
    for v in VARIANTS:
        for f in FORMATS:
            if not FORMATS_BY_NAME[f].holds(v):
                continue
            out[(v, f)] = fixture_path(root, v, f)  # the snapshot root for folder layouts
            make_fixture(v, "tiny", f, SEED, out[(v, f)])
    return out
