"""Crafted safetensors headers: each ends as ONE BonsaiFormatError naming the file (and the
tensor where one is to blame), within seconds and bounded memory -- never a traceback from
safetensors, json, TypeError, RecursionError or MemoryError. Issue 9, item 7."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from bounded_worker import run_bounded
from crafted import HEADER_CASES, raw_safetensors

from bonsai_core.cli import main
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.safetensors_io import SafetensorsReader, read_header


def _write(case: str, folder: Path) -> Path:
    header, data, header_len, _ = HEADER_CASES[case]
    return raw_safetensors(folder / f"{case}.safetensors", header, data, header_len=header_len)


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_crafted_header_is_one_clear_error(case: str, tmp_path: Path) -> None:
    path = _write(case, tmp_path)
    tensor = HEADER_CASES[case][3]
    for read in (read_header, SafetensorsReader, open_checkpoint):
        t0 = time.perf_counter()
        with pytest.raises(BonsaiFormatError) as ei:
            read(path)
        assert time.perf_counter() - t0 < 5, f"{case}: {read.__name__} took too long"
        err = ei.value
        assert err.path == str(path), str(err)
        assert str(err).startswith(str(path)), str(err)
        assert "\n" not in str(err) and "\r" not in str(err) and "\x1b" not in str(err), repr(str(err))  # one line, whatever the names
        if tensor is not None:
            assert err.tensor == tensor, f"{case}: {err}"
        assert err.__cause__ is None or isinstance(err.__cause__, (ValueError, RecursionError, UnicodeDecodeError)), repr(err.__cause__)


@pytest.mark.parametrize("case", ["deep_nesting", "length_2_63", "shape_huge", "overlap", "too_many_tensors"])
def test_cli_inspect_exits_2_with_one_line(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(case, tmp_path)
    with caplog.at_level(logging.ERROR):
        assert main(["inspect", str(path)]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage(), [r.getMessage() for r in errors]
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None


def check_every_case(folder: str) -> None:
    """Worker side of the bounded test: every crafted header, one BonsaiFormatError each."""
    for case in sorted(HEADER_CASES):
        path = _write(case, Path(folder))
        for read in (read_header, open_checkpoint):
            try:
                read(path)
            except BonsaiFormatError:
                continue
            raise AssertionError(f"{case}: {read.__name__} accepted a crafted header")


def test_every_crafted_header_within_a_256_mb_heap(tmp_path: Path) -> None:
    proc = run_bounded("test_attack_headers:check_every_case", str(tmp_path), mem_mb=256, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_valid_header_still_reads(tmp_path: Path) -> None:
    """The checks refuse what is wrong, not what is unusual: empty tensors, metadata, a gap."""
    import torch

    header = {
        "__metadata__": {"k": "v"},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "empty": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [8, 8]},
        "b": {"dtype": "U8", "shape": [2, 2], "data_offsets": [16, 20]},
    }
    data = torch.tensor([1.5, -2.0]).numpy().tobytes() + b"\0" * 8 + bytes([1, 2, 3, 4])
    path = raw_safetensors(tmp_path / "ok.safetensors", header, data)
    for mmap in (True, False):
        r = SafetensorsReader(path, mmap=mmap)
        assert r.metadata == {"k": "v"}
        assert r.get("a").tolist() == [1.5, -2.0]
        assert r.get("empty").shape == (0, 4)
        assert r.get("b").tolist() == [[1, 2], [3, 4]]
