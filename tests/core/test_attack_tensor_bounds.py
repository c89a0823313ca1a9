"""Memory follows bytes: a tensor in a ``torch.save`` archive that describes more than its file
holds (a stride of 0, a storage smaller than its view, a storage record claiming more than its zip
entry, two tensors on the same bytes) or that holds no bytes at all (meta, sparse) is refused with
one line naming the file and the tensor -- by ``inspect``, by ``convert`` (which writes nothing)
and by every reader -- before anything is allocated. Issue 18, item 1."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
from bounded_worker import run_bounded
from harness.crafted_archives import Storage, View, stride0_gemlite_pack, view_of, write_archive

from bonsai_core import cli
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.gemlite import load_state_dict
from bonsai_core.tensor_bounds import check_tensor, layout_problem
from bonsai_core.torch_archive import load_archive

PACK = "transformer-gemlite-int2"
MODULE = "transformer_blocks.0.attn.to_q"


def run_cli(*argv: str) -> tuple[int, str]:
    """``python -m bonsai_core ARGV`` in this process: (exit status, what it logged)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(handler)
    try:
        rc = cli.main(list(argv))
    finally:
        logging.getLogger().removeHandler(handler)
    return rc, buf.getvalue()


def cli_refuses(src: str, *argv: str) -> None:
    """Run in a heap-capped worker: the CLI refuses ``src`` with one line naming a tensor, exit 2."""
    dst = Path(src).parent / "out.safetensors"
    rc, log = run_cli(*argv, src, *([str(dst)] if argv[0] == "convert" else []))
    assert rc == 2, (rc, log)
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == 1 and "stride 0" in lines[0] and "tensor '" in lines[0], log
    assert not dst.exists() and not list(Path(src).parent.glob("out*")), "convert wrote output"


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_100_kb_pack_describing_the_whole_4b_model_is_refused_in_512_mb(tmp_path: Path, command: str) -> None:
    """Every tensor one stored element repeated by strides of 0: the whole Klein 4B geometry in a
    file of ~100 KB. Before: ``inspect`` passed, and ``convert`` exited 0 after writing the whole 4B
    model from it (the issue's run to a dense layout wrote 15.8 GB)."""
    root = tmp_path / "snap"
    stride0_gemlite_pack(root / PACK)
    assert (root / PACK / "state_dict.pt").stat().st_size < 200_000
    proc = run_bounded("test_attack_tensor_bounds:cli_refuses", str(root), command, mem_mb=512, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_one_stride0_w_q_is_refused_naming_it(tmp_path: Path) -> None:
    pack = stride0_gemlite_pack(tmp_path / "snap" / PACK, only=MODULE)
    with pytest.raises(BonsaiFormatError, match="stride 0") as ei:
        open_checkpoint(pack)
    assert ei.value.path == str(pack / "state_dict.pt") and ei.value.tensor == f"{MODULE}.W_q", str(ei.value)


@pytest.fixture
def gemlite_sd(tiny: dict, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path / "snap"
    shutil.copytree(tiny[("ternary", "gemlite")], root)
    sd = {k: v.clone() for k, v in load_state_dict(root / PACK / "state_dict.pt").items()}
    return root / PACK, sd


def _rewrite(pack: Path, sd: dict) -> Path:
    write_archive(pack / "state_dict.pt", sd, "state_dict")
    return pack


def test_storage_smaller_than_the_view_is_refused(gemlite_sd: tuple[Path, dict]) -> None:
    pack, sd = gemlite_sd
    w = sd[f"{MODULE}.W_q"]
    sd[f"{MODULE}.W_q"] = View(Storage("tiny", b"\0" * 16, torch.uint8), 0, tuple(w.shape), tuple(w.stride()))
    with pytest.raises(BonsaiFormatError, match="storage holds 16") as ei:
        open_checkpoint(_rewrite(pack, sd))
    assert ei.value.tensor == f"{MODULE}.W_q"


def test_storage_record_claiming_more_than_its_entry_is_refused(gemlite_sd: tuple[Path, dict]) -> None:
    """torch.load with mmap maps the claimed size from the entry's offset: the view would read the
    next entries' bytes (another layer's weights) as this one's."""
    pack, sd = gemlite_sd
    v = view_of(sd[f"{MODULE}.W_q"], "claims")
    v.storage.numel = len(v.storage.data) * 4
    sd[f"{MODULE}.W_q"] = v
    with pytest.raises(BonsaiFormatError, match="claims .* bytes but its archive entry holds") as ei:
        open_checkpoint(_rewrite(pack, sd))
    assert ei.value.tensor == f"{MODULE}.W_q"


def test_two_layers_on_the_same_bytes_are_refused_naming_both(gemlite_sd: tuple[Path, dict]) -> None:
    pack, sd = gemlite_sd
    other = "transformer_blocks.0.attn.to_k"
    w = view_of(sd[f"{MODULE}.W_q"], "shared")
    shared = Storage("shared", w.storage.data * 2, torch.uint8)
    sd[f"{MODULE}.W_q"] = View(shared, 0, w.shape, w.stride)
    sd[f"{other}.W_q"] = View(shared, len(w.storage.data) // 2, w.shape, w.stride)  # half of its bytes are the first one's
    with pytest.raises(BonsaiFormatError, match="shares bytes") as ei:
        open_checkpoint(_rewrite(pack, sd))
    assert {ei.value.tensor, str(ei.value).split("with '")[1].split("'")[0]} == {f"{MODULE}.W_q", f"{other}.W_q"}


@pytest.mark.parametrize(
    ("kind", "make", "message"),
    [
        ("meta", lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"), "meta tensor"),
        ("sparse", lambda t: t.float().to_sparse(), "sparse tensor"),
    ],
)
def test_meta_and_sparse_tensors_are_one_line(gemlite_sd: tuple[Path, dict], kind: str, make, message: str) -> None:  # noqa: ANN001
    """Before: both passed validation and ended as raw runtime errors."""
    pack, sd = gemlite_sd
    sd["x_embedder.weight"] = make(sd["x_embedder.weight"])
    torch.save(sd, pack / "state_dict.pt")
    rc, log = run_cli("inspect", str(pack))
    assert rc == 2 and log.count("\n") == 1 and message in log and "x_embedder.weight" in log, log


def test_a_transposed_w_q_is_read_with_identical_codes(gemlite_sd: tuple[Path, dict]) -> None:
    """A permutation of a contiguous view (``torch.save`` keeps a ``.t()`` as is) is dense and in
    bounds: accepted, and made contiguous at exactly its own size."""
    pack, sd = gemlite_sd
    before = open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    sd = {k: (v.t().contiguous().t() if k.endswith(".W_q") else v) for k, v in sd.items()}
    assert not sd[f"{MODULE}.W_q"].is_contiguous()
    torch.save(sd, pack / "state_dict.pt")
    after = open_checkpoint(pack).load_packed("double_blocks.0.img_attn.qkv.weight")
    assert torch.equal(before.codes, after.codes) and torch.equal(before.scales, after.scales)


@pytest.mark.parametrize(
    ("shape", "stride", "offset", "nbytes", "ok"),
    [
        ((4, 3), (3, 1), 0, 12, True),  # contiguous
        ((4, 3), (1, 4), 0, 12, True),  # transposed
        ((2, 3, 4), (1, 8, 2), 0, 24, True),  # permuted
        ((1, 5), (99, 1), 2, 7, True),  # a size-1 dim's stride does not matter
        ((0, 7), (0, 0), 0, 0, True),  # empty
        ((4, 3), (3, 1), 1, 12, False),  # one past the end
        ((4, 3), (0, 1), 0, 12, False),  # stride 0
        ((4, 3), (1, 1), 0, 12, False),  # overlapping
        ((4, 3), (6, 1), 0, 48, False),  # a strided slice (gaps)
        ((4,), (1, 1), 0, 4, False),  # sizes and strides disagree
        ((4,), (1,), -1, 4, False),  # negative offset
        ((1 << 63,), (1,), 0, 4, False),  # beyond any disk
        ((2,) * 9, (1,) * 9, 0, 1 << 20, False),  # too many dims
    ],
)
def test_the_rule_on_plain_numbers(shape: tuple, stride: tuple, offset: int, nbytes: int, ok: bool) -> None:
    assert (layout_problem(shape, stride, offset, 1, nbytes) is None) == ok


def test_check_tensor_refuses_meta_sparse_and_views_past_their_storage() -> None:
    good = torch.arange(12.0).reshape(3, 4)
    assert check_tensor("f", "t", good) is good and check_tensor("f", "t", good.t()) is not None
    for bad, words in (
        (torch.empty(3, device="meta"), "meta"),
        (torch.eye(2).to_sparse(), "layout"),
        (torch.zeros(1).expand(1000), "stride 0"),
        (good[:, :2], "strided slice"),
    ):
        with pytest.raises(BonsaiFormatError, match=words):
            check_tensor("f", "t", bad)


def test_every_loaded_archive_tensor_passes_the_rule(tiny: dict) -> None:
    """The released layouts themselves pass: nothing legitimate is refused."""
    sd = load_archive(tiny[("ternary", "gemlite")] / PACK / "state_dict.pt")
    assert sd and all(check_tensor("f", k, v) is v for k, v in sd.items())
