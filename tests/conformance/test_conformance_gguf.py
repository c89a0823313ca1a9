"""Every public binary/ternary ggml block layout, written with the ``gguf`` package's own GGUFWriter
(explicit type ids) and checked against a decoder written here from each layout's public description
(ggml's dequantize_row_* and PrismML's fork, see docs/FORMAT.md §2.4), independent of the reader.

The blocks are encoded as the public reference quantizers do (scale = the block's largest magnitude,
code = round(w / d) + 1), or by the gguf package itself where it has the type (TQ1_0, TQ2_0). The
source is the tiny synthetic Klein model, whose layers are exact ternary/binary, so every layout
must also give back exactly the source weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from bonsai_core.checkpoint import BonsaiCheckpoint
from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats import open_checkpoint
from bonsai_core.formats.ggml_blocks import LAYOUTS, resolve_q2_0
from bonsai_core.formats.gguf import write_gguf
from bonsai_tools.synth import make_fixture

Q = gguf.GGMLQuantizationType
SEED = 11
POW3 = np.array([1, 3, 9, 27, 81], np.uint16)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BonsaiCheckpoint]:
    root = tmp_path_factory.mktemp("gguf-src")
    return {v: open_checkpoint(make_fixture(v, "tiny", "canonical", SEED, root / f"{v}.safetensors")) for v in ("binary", "ternary")}


# --- encoders, as the public reference quantizers (quantize_row_*_ref) compute them ---------------


def _roundf(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)  # C roundf: halves away from zero


def _amax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.abs(x).max(axis=1).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    return d.astype(np.float16), inv


def enc_q1_0(x: np.ndarray) -> np.ndarray:
    """block_q1_0: fp16 d (mean |w|) + 16 bytes, bit j%8 of byte j/8 set when w >= 0."""
    d = (np.abs(x).sum(axis=1) / 128).astype(np.float16)
    bits = (x >= 0).astype(np.uint8).reshape(-1, 16, 8) << np.arange(8, dtype=np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), bits.sum(axis=2).astype(np.uint8)], axis=1)


def enc_q2(x: np.ndarray) -> np.ndarray:
    """block_q2_0 (64 or 128 weights) / block_pq2_0: fp16 d, then 2-bit codes round(w/d)+1 clamped
    to 0..3, value j in bits 2(j%4) of byte j/4."""
    d, inv = _amax(x)
    q = np.clip(_roundf(x * inv[:, None]) + 1, 0, 3).astype(np.uint8).reshape(x.shape[0], -1, 4)
    qs = (q << (np.arange(4, dtype=np.uint8) * 2)).sum(axis=2).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1)


def enc_ptq1_0(x: np.ndarray) -> np.ndarray:
    """block_ptq1_0: qs[24] (stages of 16 and 8 bytes, value n*c+m in trit n of byte m, the first
    value most significant), qh[2] (value 120+2n+h), fp16 d last; byte = ceil(q * 256 / 243)."""
    d, inv = _amax(x)
    t = np.clip(_roundf(x * inv[:, None]) + 1, 0, 2).astype(np.uint16)
    out = np.zeros((x.shape[0], 28), np.uint8)
    j = 0
    for c in (16, 8):
        q = np.zeros((x.shape[0], c), np.uint16)
        for n in range(5):
            q = q * 3 + t[:, j * 5 + n * c : j * 5 + n * c + c]
        out[:, j : j + c] = (q * 256 + 242) // 243
        j += c
    q = np.zeros((x.shape[0], 2), np.uint16)
    for m in range(4):
        q = q * 3 + t[:, 120 + 2 * m : 122 + 2 * m]
    out[:, 24:26] = (q * 3 * 256 + 242) // 243
    out[:, 26:28] = d.view(np.uint8).reshape(-1, 2)
    return out


def enc_gguf(kind: Q) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: gguf.quants.quantize(x.reshape(1, -1), kind).reshape(x.shape[0], -1)


# --- decoders, transcribed from the public dequantize_row_* loops (block by block, value by value) ---


def dec_q1_0(b: np.ndarray) -> np.ndarray:
    d = b[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
    return np.stack([np.where((b[:, 2 + j // 8] >> (j % 8)) & 1, d, -d) for j in range(128)], axis=1)


def dec_q2(qk: int) -> Callable[[np.ndarray], np.ndarray]:
    def dec(b: np.ndarray) -> np.ndarray:
        d = b[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
        return np.stack([(((b[:, 2 + j // 4] >> ((j % 4) * 2)) & 3).astype(np.float32) - 1) * d for j in range(qk)], axis=1)

    return dec


def dec_ptq1_0(b: np.ndarray) -> np.ndarray:
    d = b[:, 26:28].copy().view(np.float16)[:, 0].astype(np.float32)
    vals = []
    j = 0
    for c in (32, 16, 8):
        while j + c <= 24:
            for n in range(5):
                for m in range(c):
                    q = (b[:, j + m].astype(np.uint16) * POW3[n]) & 255
                    vals.append(((q * 3) >> 8).astype(np.float32) - 1)
            j += c
    for n in range(4):
        for h in range(2):
            q = (b[:, 24 + h].astype(np.uint16) * POW3[n]) & 255
            vals.append(((q * 3) >> 8).astype(np.float32) - 1)
    return np.stack(vals, axis=1) * d[:, None]


def dec_gguf(kind: Q) -> Callable[[np.ndarray], np.ndarray]:
    return lambda b: gguf.quants.dequantize(b.reshape(1, -1), kind).reshape(b.shape[0], -1)


# (type id, weights per block, encoder, reference decoder) per layout
VARIANTS = {
    "Q2_0 g64 (mainline)": (42, 64, enc_q2, dec_q2(64)),
    "Q2_0 g128 (PrismML's first)": (42, 128, enc_q2, dec_q2(128)),
    "PQ2_0": (142, 128, enc_q2, dec_q2(128)),
    "PTQ1_0": (143, 128, enc_ptq1_0, dec_ptq1_0),
    "TQ1_0": (int(Q.TQ1_0), 256, enc_gguf(Q.TQ1_0), dec_gguf(Q.TQ1_0)),
    "TQ2_0": (int(Q.TQ2_0), 256, enc_gguf(Q.TQ2_0), dec_gguf(Q.TQ2_0)),
}


def write_file(path: Path, ckpt: BonsaiCheckpoint, type_id: int, qk: int, encode: Callable, **opts) -> dict[str, np.ndarray]:
    """A BFL-named GGUF written by the gguf package's GGUFWriter: dense tensors BF16, block linears
    as ``type_id`` blocks of ``qk`` weights. Returns the blocks written per packed key."""
    weights = {k: ckpt.load_packed(k).dequantize().numpy() for k in ckpt.packed_shapes}
    for edit in opts.get("edits", ()):
        edit(weights)
    w = gguf.GGUFWriter(path, "flux")
    for key, value in opts.get("kv", {}).items():
        w.add_uint32(key, value)
    data: list[np.ndarray] = []
    for key in ckpt.dense_shapes:
        raw = ckpt.load_dense(key).to(torch.bfloat16).contiguous()
        w.add_tensor_info(key, raw.shape, np.dtype(np.float16), raw.numel() * 2, raw_dtype=Q.BF16)
        data.append(raw.view(torch.int16).numpy())
    qk_of = opts.get("qk_of", {})
    blocks = {key: encode(x.reshape(-1, qk_of.get(key, qk)).astype(np.float32)) for key, x in weights.items()}
    for edit in opts.get("block_edits", ()):
        edit(blocks)
    for key, x in weights.items():
        w.add_tensor_info(key, x.shape, np.dtype(np.float16), blocks[key].nbytes, raw_dtype=type_id)  # type: ignore[arg-type]
        data.append(blocks[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for d in data:
        w.write_tensor_data(d)
    w.close()
    return blocks


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ternary_block_layout_reads_exactly(sources: dict, tmp_path: Path, name: str) -> None:
    type_id, qk, encode, decode = VARIANTS[name]
    src = sources["ternary"]
    first = next(iter(src.packed_shapes))

    def silent_half(weights: dict[str, np.ndarray]) -> None:
        weights[first][0, :64] = 0  # a group whose first 64 weights are all zero (a 64-block with d = 0)

    blocks = write_file(tmp_path / "t.gguf", src, type_id, qk, encode, edits=[silent_half])
    ck = open_checkpoint(tmp_path / "t.gguf")
    assert ck.meta.variant == "ternary" and ck.meta.source_format == "gguf"
    for key, (n, k) in src.packed_shapes.items():
        ours = ck.load_packed(key).dequantize()
        reference = torch.from_numpy(decode(blocks[key]).reshape(n, k))
        assert torch.equal(ours, reference), (name, key)
        if qk == 256:
            continue  # one scale per 256 weights cannot carry two groups' scales: only the file's own values count
        expected = src.load_packed(key).dequantize()
        if key == first:
            expected[0, :64] = 0
        assert torch.equal(ours, expected), (name, key)
    for key in src.dense_shapes:
        assert torch.equal(ck.load_dense(key), src.load_dense(key).to(torch.bfloat16)), key


def test_binary_q1_0_reads_exactly_and_our_writer_matches_the_reference(sources: dict, tmp_path: Path) -> None:
    src = sources["binary"]
    blocks = write_file(tmp_path / "b.gguf", src, int(Q.Q1_0), 128, enc_q1_0)
    ck = open_checkpoint(tmp_path / "b.gguf")
    ours_written = gguf.GGUFReader(write_gguf(src, tmp_path / "ours.gguf"))
    ours_blocks = {t.name: np.asarray(t.data) for t in ours_written.tensors if t.tensor_type == Q.Q1_0}
    for key, (n, k) in src.packed_shapes.items():
        expected = src.load_packed(key).dequantize()
        assert torch.equal(ck.load_packed(key).dequantize(), torch.from_numpy(dec_q1_0(blocks[key]).reshape(n, k))), key
        assert torch.equal(ck.load_packed(key).dequantize(), expected), key
        assert torch.equal(torch.from_numpy(dec_q1_0(ours_blocks[key].reshape(-1, 18)).reshape(n, k)), expected), key


def _error(path: Path) -> BonsaiFormatError:
    with pytest.raises(BonsaiFormatError) as ei:
        ck = open_checkpoint(path)
        for key in ck.packed_shapes:
            ck.load_packed(key)
    assert ei.value.path == str(path) and "\n" not in str(ei.value)
    return ei.value


def test_q2_0_g64_halves_with_two_scales_are_refused(sources: dict, tmp_path: Path) -> None:
    src = sources["ternary"]
    first = next(iter(src.packed_shapes))

    def two_scales(weights: dict[str, np.ndarray]) -> None:
        weights[first][1, 192:256] *= 2  # row 1, group 1: second 64-block at twice the scale

    write_file(tmp_path / "t.gguf", src, 42, 64, enc_q2, edits=[two_scales])
    err = _error(tmp_path / "t.gguf")
    assert err.tensor == first and "row 1, group 1" in str(err) and "one scale per 128 weights" in str(err)


def test_code_3_is_refused_naming_row_and_input(sources: dict, tmp_path: Path) -> None:
    src = sources["ternary"]
    first = next(iter(src.packed_shapes))

    k = src.packed_shapes[first][1]

    def plus_two(blocks: dict[str, np.ndarray]) -> None:
        # no reference quantizer writes code 3 (+2d): set it by hand at row 2, input 130
        blocks[first][2 * k // 128 + 1, 2 + 2 // 4] |= 3 << (2 * (130 % 4))

    write_file(tmp_path / "t.gguf", src, 142, 128, enc_q2, block_edits=[plus_two])
    err = _error(tmp_path / "t.gguf")
    assert err.tensor == first and "code 3 at row 2, input 130" in str(err)


def test_hadamard_rotated_files_are_refused(sources: dict, tmp_path: Path) -> None:
    write_file(tmp_path / "t.gguf", sources["ternary"], 143, 128, enc_ptq1_0, kv={"prism.hadamard.version": 1})
    err = _error(tmp_path / "t.gguf")
    assert err.tensor == "prism.hadamard.version" and "Hadamard-rotated" in str(err)


@pytest.mark.parametrize("type_id, named", [(int(Q.IQ2_XXS), "IQ2_XXS (type 16)"), (200, "ggml type 200")])
def test_other_block_types_get_one_line_naming_the_type(sources: dict, tmp_path: Path, type_id: int, named: str) -> None:
    write_file(tmp_path / "t.gguf", sources["ternary"], type_id, 128, enc_q2)
    err = _error(tmp_path / "t.gguf")
    assert f"block linear stored as {named}" in str(err) and "gemlite, MLX or unpacked" in str(err)


def test_type_42_layout_is_decided_by_size_and_a_cut_file_is_named(sources: dict, tmp_path: Path) -> None:
    assert resolve_q2_0(128, 64, 32) == [LAYOUTS["Q2_0"], LAYOUTS["Q2_0_g128"]]  # too small to tell
    assert resolve_q2_0(4096, 1152, 32) == [LAYOUTS["Q2_0"]] and resolve_q2_0(4096, 1088, 32) == [LAYOUTS["Q2_0_g128"]]
    assert resolve_q2_0(4096, 1100, 32) == []
    path = tmp_path / "t.gguf"
    write_file(path, sources["ternary"], 42, 64, enc_q2)
    path.write_bytes(path.read_bytes()[:-1000])
    err = _error(path)
    assert "type 42 (Q2_0)" in str(err) and "Q2_0 blocks like the rest of the file" in str(err)
    keys = list(sources["ternary"].packed_shapes)
    write_file(path, sources["ternary"], 42, 64, enc_q2, qk_of=dict.fromkeys(keys[len(keys) // 2 :], 128))
    err = _error(path)
    assert "some fit only 64-weight blocks, others only 128-weight blocks" in str(err)


def test_a_cut_file_names_the_tensor_that_does_not_fit(sources: dict, tmp_path: Path) -> None:
    """Each tensor's size by its type must fit before the next tensor or the end of the file."""
    path = tmp_path / "t.gguf"
    blocks = write_file(path, sources["ternary"], 143, 128, enc_ptq1_0)
    path.write_bytes(path.read_bytes()[:-100])
    err = _error(path)
    assert err.tensor == list(blocks)[-1] and "PTQ1_0 (type 143)" in str(err)
    assert "the file holds" in str(err) and "truncated" in str(err)
