"""torch.save archives (gemlite ``state_dict.pt``, HQQ ``qmodel.pt``): a re-compressed pack, a
zip bomb, overlapping or encrypted entries, a truncated archive, an oversized pickle and a FIFO
are refused before torch.load, naming the file and the entry. Issue 9, items 2 and 5."""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from bounded_worker import run_bounded

import bonsai_core.torch_archive as archive
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint

PACK = "transformer-gemlite-int2"


@pytest.fixture
def pack(tiny: dict, tmp_path: Path) -> Path:
    root = tmp_path / "snap"
    shutil.copytree(tiny[("ternary", "gemlite")], root)
    return root / PACK


def _rezip(src: Path, dst: Path, method: int) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", method) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def _central_records(raw: bytes) -> list[int]:
    """Offsets of the central directory records of a zip held in ``raw``."""
    out, i = [], raw.find(b"PK\x01\x02")
    while i >= 0:
        out.append(i)
        i = raw.find(b"PK\x01\x02", i + 4)
    return out


def test_recompressed_pack_is_refused_naming_the_entry(pack: Path) -> None:
    """A valid zip with deflated entries converted into NaN weights with exit 0 before."""
    sd = pack / "state_dict.pt"
    _rezip(sd, pack / "re.pt", zipfile.ZIP_DEFLATED)
    os.replace(pack / "re.pt", sd)
    with pytest.raises(BonsaiFormatError, match="compressed") as ei:
        open_checkpoint(pack)
    assert ei.value.path == str(sd), str(ei.value)
    assert ei.value.tensor is not None and "/" in ei.value.tensor, str(ei.value)  # the archive entry


def make_zip_bomb(path: str) -> None:
    """A 1 MB-ish state_dict.pt whose one storage inflates to 1 GB."""
    small = Path(path).with_suffix(".small")
    torch.save({"w": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data/0"):
                with zout.open(info.filename, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 20)
                    for _ in range(1024):
                        f.write(chunk)
            else:
                zout.writestr(info.filename, data)
    small.unlink()


def load_expecting_error(path: str) -> None:
    try:
        archive.load_archive(path)
    except BonsaiFormatError as e:
        assert "compressed" in str(e), str(e)
        return
    raise AssertionError("the zip bomb loaded")


def test_zip_bomb_is_refused_within_a_256_mb_heap(tmp_path: Path) -> None:
    bomb = tmp_path / "state_dict.pt"
    make_zip_bomb(str(bomb))
    assert bomb.stat().st_size < 4 << 20
    proc = run_bounded("test_attack_archives:load_expecting_error", str(bomb), mem_mb=256, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_overlapping_entries_are_refused(pack: Path) -> None:
    sd = pack / "state_dict.pt"
    raw = bytearray(sd.read_bytes())
    recs = _central_records(bytes(raw))
    first_offset = struct.unpack_from("<L", raw, recs[0] + 42)[0]
    struct.pack_into("<L", raw, recs[-1] + 42, first_offset)  # the last entry now claims the first one's bytes
    sd.write_bytes(bytes(raw))
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(pack)
    assert ei.value.path == str(sd), str(ei.value)


def test_encrypted_entry_is_refused(pack: Path) -> None:
    sd = pack / "state_dict.pt"
    raw = bytearray(sd.read_bytes())
    rec = _central_records(bytes(raw))[1]
    struct.pack_into("<H", raw, rec + 8, struct.unpack_from("<H", raw, rec + 8)[0] | 1)
    sd.write_bytes(bytes(raw))
    with pytest.raises(BonsaiFormatError, match="encrypted"):
        open_checkpoint(pack)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_archive_is_refused(pack: Path, keep: float) -> None:
    sd = pack / "state_dict.pt"
    raw = sd.read_bytes()
    sd.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(BonsaiFormatError) as ei:
        open_checkpoint(pack)
    assert ei.value.path == str(sd)


def test_oversized_pickle_is_refused(pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(BonsaiFormatError, match="pickle of .* bytes exceeds"):
        open_checkpoint(pack)


@pytest.mark.timeout(60)
def test_fifo_as_state_dict_does_not_hang(pack: Path) -> None:
    sd = pack / "state_dict.pt"
    sd.unlink()
    os.mkfifo(sd)
    with pytest.raises(BonsaiFormatError, match="regular file"):
        open_checkpoint(pack / "state_dict.pt")


def test_stored_archive_still_loads(pack: Path) -> None:
    """Re-zipping with stored entries (what torch.save writes) keeps the pack readable."""
    sd = pack / "state_dict.pt"
    before = open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    _rezip(sd, pack / "re.pt", zipfile.ZIP_STORED)
    os.replace(pack / "re.pt", sd)
    after = open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert torch.equal(before.codes, after.codes) and torch.equal(before.scales, after.scales)
