"""4-bit text encoder layouts: bit-exact round trips, the dequant formulas against MLX and HQQ's
documented formula, and clear errors for bad files. No ComfyUI needed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.te_formats import (
    TE_GROUP_SIZE,
    expected_dense_shapes,
    expected_linear_shapes,
    pack_nibbles,
    read_hqq,
    read_te,
    read_te_mlx,
    resolve_te_folder,
    unpack_nibbles,
)
from bonsai_tools.synth import QWEN3_4B_CONFIG, QWEN3_TINY_CONFIG, make_te_fixture, random_te, write_hqq, write_mlx

# a very small config for tests that rewrite files many times (2 layers)
MINI = {**QWEN3_TINY_CONFIG, "num_hidden_layers": 2, "vocab_size": 256}


def _assert_same(a, b) -> None:  # noqa: ANN001
    assert set(a.packed) == set(b.packed) and set(a.dense) == set(b.dense)
    for k, p in a.packed.items():
        q = b.packed[k]
        assert p.layout == q.layout and p.group_size == q.group_size, k
        assert torch.equal(p.codes, q.codes), k
        assert p.scales.dtype == q.scales.dtype and torch.equal(p.scales, q.scales), k
        assert torch.equal(p.offsets, q.offsets), k
    for k, t in a.dense.items():
        assert t.dtype == b.dense[k].dtype and torch.equal(t, b.dense[k]), k


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), kb=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_nibbles_round_trip(n: int, kb: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, 2 * kb), generator=g, dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (n, kb)
    assert torch.equal(unpack_nibbles(packed), q)
    # column 2j sits in the low nibble of byte j (= MLX's LSB-first uint32 words, little-endian)
    assert torch.equal(packed & 15, q[:, 0::2]) and torch.equal(packed >> 4, q[:, 1::2])


@pytest.mark.parametrize("prefix", ["model.", ""])
@pytest.mark.parametrize("lm_head", ["tied", "absent"])
def test_hqq_round_trip(tmp_path: Path, prefix: str, lm_head: str) -> None:
    te = random_te(MINI, "hqq", seed=1)
    write_hqq(te, tmp_path, prefix=prefix, lm_head=lm_head)
    raw = torch.load(tmp_path / "qmodel.pt", weights_only=True)
    # the released key convention: Qwen3ForCausalLM leaves ("model.layers.0...") or Qwen3Model ("layers.0...")
    assert ("model.layers.0.self_attn.q_proj" in raw) == (prefix == "model.")
    assert ("layers.0.mlp.down_proj" in raw) == (prefix == "")
    back = read_hqq(tmp_path)
    assert back.lm_head == lm_head
    _assert_same(te, back)


def test_mlx_round_trip(tmp_path: Path) -> None:
    te = random_te(MINI, "mlx", seed=2)
    write_mlx(te, tmp_path)
    back = read_te_mlx(tmp_path)
    _assert_same(te, back)
    # the embedding is quantized in MLX releases; every linear is uint32 words
    assert "model.embed_tokens.weight" in back.packed
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 64, "bits": 4}


def _mx():
    return pytest.importorskip("mlx.core")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_mlx_dequant_matches_mlx(tmp_path: Path, dtype: str) -> None:
    """A file written by MLX itself (mx.quantize + mx.save_safetensors) reads and dequantizes
    bit-identically to ``mx.dequantize``."""
    mx = _mx()
    rng = np.random.default_rng(0)
    cfg = MINI
    arrays: dict[str, object] = {}
    want: dict[str, np.ndarray] = {}
    mdt = getattr(mx, dtype)
    shapes = {**expected_linear_shapes(cfg), "model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"])}
    for name, (n, k) in shapes.items():
        w = mx.array(rng.standard_normal((n, k)).astype(np.float32) * 0.05).astype(mdt)
        q, s, b = mx.quantize(w, group_size=64, bits=4)
        base = name[: -len(".weight")]
        arrays[name], arrays[base + ".scales"], arrays[base + ".biases"] = q, s, b
        want[name] = np.array(mx.dequantize(q, s, b, group_size=64, bits=4).astype(mx.float32))
    for name, shape in expected_dense_shapes(cfg).items():
        if name not in shapes:
            arrays[name] = mx.ones(shape, dtype=mdt)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), arrays)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization": {"group_size": 64, "bits": 4}}))
    te = read_te_mlx(tmp_path)
    tdt = getattr(torch, dtype)
    for name, ref in want.items():
        got = te.packed[name].dequantize(tdt).float().numpy()
        np.testing.assert_array_equal(got, ref, err_msg=name)


def _hqq_documented_quantize(w: torch.Tensor, gs: int) -> dict[str, object]:
    """HQQ ``Quantizer.quantize`` (axis=1, no optimizer) + ``pack_4bit_u8`` as documented in HQQ."""
    shape = w.shape
    wg = w.float().reshape(-1, gs)
    lo, hi = wg.min(dim=1, keepdim=True)[0], wg.max(dim=1, keepdim=True)[0]
    scale = (15 / (hi - lo)).clamp(max=2e4)
    zero = -lo * scale
    w_q = (wg * scale + zero).round_().clamp_(0, 15).to(torch.uint8)
    half = w_q.shape[0] // 2
    packed = (w_q[:half] << 4) | w_q[half:]
    return {
        "W_q": torch.nn.Parameter(packed, requires_grad=False),
        "nbits": 4,
        "group_size": gs,
        "shape": shape,
        "scale": (1.0 / scale).half(),
        "zero": zero.half(),
        "axis": 1,
        "packing": "4bit_u8",
        "unpack_view_dtype": torch.uint8,
        "view_as_float": False,
        "quant_scale": False,
        "quant_zero": False,
        "compute_dtype": torch.float16,
        "offload_meta": False,
        "stores_quant_config": True,
        "channel_wise": True,
        "optimize": False,
        "round_zero": False,
    }


def _hqq_documented_dequantize(entry: dict[str, object], dtype: torch.dtype) -> torch.Tensor:
    """HQQ ``Quantizer.dequantize``: ``unpack_4bit_u8`` then ``((W_r - zero) * scale).reshape(shape)`` in the compute dtype."""
    w_q = entry["W_q"].data
    w_r = torch.cat([(w_q & 0b11110000) >> 4, w_q & 0b00001111], 0).to(dtype)
    return ((w_r - entry["zero"].to(dtype)) * entry["scale"].to(dtype)).reshape(entry["shape"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_hqq_dequant_matches_hqq_formula(tmp_path: Path, dtype: torch.dtype) -> None:
    """A qmodel.pt built by HQQ's documented quantize/pack (not by our writer) reads and dequantizes
    bit-identically to HQQ's documented dequantize in each compute dtype."""
    g = torch.Generator().manual_seed(3)
    cfg = MINI
    weights: dict[str, dict[str, object]] = {}
    for name, (n, k) in expected_linear_shapes(cfg).items():
        weights[name[: -len(".weight")]] = _hqq_documented_quantize(torch.randn(n, k, generator=g) * 0.05, TE_GROUP_SIZE)
    for name, shape in expected_dense_shapes(cfg).items():
        weights[name[: -len(".weight")]] = {"weight": torch.ones(shape, dtype=torch.bfloat16)}
    torch.save(weights, tmp_path / "qmodel.pt")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen3ForCausalLM"]}))
    te = read_hqq(tmp_path)
    for module, entry in weights.items():
        if "W_q" in entry:
            assert torch.equal(te.packed[module + ".weight"].dequantize(dtype), _hqq_documented_dequantize(entry, dtype)), module


def test_fp32_dequant_is_exact(tmp_path: Path) -> None:
    """In fp32 both formulas are exact for fp16 HQQ parameters (so fp32 CLIP math loses nothing)."""
    te = random_te(MINI, "hqq", seed=4)
    p = te.packed["model.layers.0.mlp.down_proj.weight"]
    q = unpack_nibbles(p.codes).double().view(p.shape[0], -1, TE_GROUP_SIZE)
    exact = ((q - p.offsets.double().unsqueeze(-1)) * p.scales.double().unsqueeze(-1)).view(p.shape)
    assert torch.equal(p.dequantize(torch.float32).double(), exact)


def test_fixture_folders_and_resolution(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x", "tokenizer_class": "Qwen2Tokenizer"}))
    snap = tmp_path / "bonsai-image-ternary-4B-gemlite-2bit"
    hqq = make_te_fixture("hqq", "tiny", 0, snap / "text_encoder-hqq-4bit", tokenizer_src=tok)
    assert sorted(p.name for p in hqq.iterdir()) == ["config.json", "qmodel.pt", "tokenizer"]
    assert (hqq / "tokenizer" / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((hqq / "tokenizer" / "tokenizer_config.json").read_text())
    assert resolve_te_folder(snap) == hqq and resolve_te_folder(hqq) == hqq
    te = read_te(snap)
    assert te.layout == "hqq" and len(te.packed) == 7 * 28
    mlx = make_te_fixture("mlx", "tiny", 0, tmp_path / "m" / "text_encoder-mlx-4bit")
    assert {p.name for p in mlx.iterdir()} == {"config.json", "model.safetensors", "model.safetensors.index.json"}
    assert read_te(tmp_path / "m").layout == "mlx"


def test_full_size_inventory_matches_release() -> None:
    """Arithmetic only (the real 4B is too big for CPU tests): the Qwen3-4B config gives the
    released tensor counts and sizes (docs/FORMAT.md §2.7)."""
    cfg = QWEN3_4B_CONFIG
    linears = expected_linear_shapes(cfg)
    dense = expected_dense_shapes(cfg)
    assert len(linears) == 252
    assert {linears["model.layers.0.self_attn.q_proj.weight"], linears["model.layers.35.mlp.down_proj.weight"]} == {
        (4096, 2560),
        (2560, 9728),
    }
    # HQQ: 4-bit codes + fp16 scale and zero per 64 + bf16 embedding and norms = 2691.6 MiB
    lin = sum(n * k for n, k in linears.values())
    hqq = lin // 2 + lin // 64 * 4 + sum(int(np.prod(s)) * 2 for s in dense.values())
    assert abs(hqq / 2**20 - 2691.6) < 0.5
    # MLX: 904 tensors = 252 linears x 3 + 144 layer norms + final norm + embedding x 3
    assert 252 * 3 + (len(dense) - 1) + 3 == 904
    emb = cfg["vocab_size"] * cfg["hidden_size"]
    mlx = (lin + emb) // 2 + (lin + emb) // 64 * 4 + sum(int(np.prod(s)) * 2 for k, s in dense.items() if "embed" not in k)
    assert abs(mlx - 2_263_022_529) < 200_000  # the rest is the safetensors header


# ----------------------------------------------------------------------------- bad input


def _mini_hqq(tmp_path: Path) -> Path:
    write_hqq(random_te(MINI, "hqq", seed=5), tmp_path)
    return tmp_path


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_hqq_malicious_pickle_refused(tmp_path: Path) -> None:
    """Inside a torch.save archive the weights-only unpickler refuses the payload before it runs."""
    folder = _mini_hqq(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens": _Evil(marker)}, folder / "qmodel.pt")
    with pytest.raises(BonsaiFormatError, match="qmodel.pt.*refusing to unpickle"):
        read_hqq(folder)
    assert not marker.exists()


def test_hqq_raw_pickle_refused_before_unpickling(tmp_path: Path) -> None:
    """A bare pickle stream (no torch.save archive) is refused from its first bytes, never unpickled."""
    folder = _mini_hqq(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "qmodel.pt", "wb") as f:
        pickle.dump({"model.embed_tokens": _Evil(marker)}, f, protocol=2)
    with pytest.raises(BonsaiFormatError, match="qmodel.pt.*not a torch.save zip archive"):
        read_hqq(folder)
    assert not marker.exists()


def test_hqq_truncated(tmp_path: Path) -> None:
    folder = _mini_hqq(tmp_path)
    data = (folder / "qmodel.pt").read_bytes()
    (folder / "qmodel.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BonsaiFormatError, match="qmodel.pt.*truncated or corrupt"):
        read_hqq(folder)


@pytest.mark.parametrize(
    ("mutate", "tensor", "message"),
    [
        (lambda w: w["model.layers.1.mlp.up_proj"].update(packing="2bit_u8", nbits=2), "model.layers.1.mlp.up_proj", "not 4bit_u8"),
        (lambda w: w["model.layers.0.self_attn.k_proj"].update(axis=0), "model.layers.0.self_attn.k_proj", "axis=0"),
        (lambda w: w.pop("model.layers.1.self_attn.o_proj"), "model.layers.1.self_attn.o_proj.weight", "missing"),
        (
            lambda w: w["model.layers.0.mlp.down_proj"].update(scale=torch.ones(3, 1, dtype=torch.float16)),
            "model.layers.0.mlp.down_proj",
            "scale",
        ),
        (lambda w: w["model.norm"].update(weight=torch.ones(7)), "model.norm.weight", "does not match config"),
    ],
)
def test_hqq_bad_entries_name_the_tensor(tmp_path: Path, mutate, tensor: str, message: str) -> None:  # noqa: ANN001
    folder = _mini_hqq(tmp_path)
    weights = torch.load(folder / "qmodel.pt", weights_only=True)
    mutate(weights)
    torch.save(weights, folder / "qmodel.pt")
    with pytest.raises(BonsaiFormatError) as e:
        read_hqq(folder)
    assert e.value.tensor == tensor and message in str(e.value) and "qmodel.pt" in str(e.value)


def test_mlx_bad_files(tmp_path: Path) -> None:
    write_mlx(random_te(MINI, "mlx", seed=6), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization": {"group_size": 64, "bits": 8}}))
    with pytest.raises(BonsaiFormatError, match="bits=8"):
        read_te_mlx(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(BonsaiFormatError, match="truncated"):
        read_te_mlx(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(BonsaiFormatError, match="config.json is missing"):
        read_te_mlx(tmp_path)


def test_not_a_te_folder(tmp_path: Path) -> None:
    with pytest.raises(BonsaiFormatError, match="no 4-bit text encoder"):
        read_te(tmp_path)


def _mlx_folder(tmp_path: Path, override: dict[str, dict[str, int]]) -> dict[str, np.ndarray]:
    """An mlx-lm style folder written by MLX itself; ``override`` gives per-tensor bits/group_size."""
    mx = _mx()
    rng = np.random.default_rng(7)
    arrays: dict[str, object] = {}
    want: dict[str, np.ndarray] = {}
    shapes = {**expected_linear_shapes(MINI), "model.embed_tokens.weight": (MINI["vocab_size"], MINI["hidden_size"])}
    for name, (n, k) in shapes.items():
        q_args = {"group_size": 64, "bits": 4, **override.get(name, {})}
        w = mx.array(rng.standard_normal((n, k)).astype(np.float32) * 0.05).astype(mx.bfloat16)
        q, s, b = mx.quantize(w, **q_args)
        base = name[: -len(".weight")]
        arrays[name], arrays[base + ".scales"], arrays[base + ".biases"] = q, s, b
        want[name] = np.array(mx.dequantize(q, s, b, **q_args).astype(mx.float32))
    for name, shape in expected_dense_shapes(MINI).items():
        if name not in shapes:
            arrays[name] = mx.ones(shape, dtype=mx.bfloat16)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), arrays)
    (tmp_path / "config.json").write_text(json.dumps({**MINI, "quantization": {"group_size": 64, "bits": 4}}))
    return want


def test_mlx_per_layer_group_size_is_read_from_shapes(tmp_path: Path) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    want = _mlx_folder(tmp_path, {name: {"group_size": 32}})
    te = read_te_mlx(tmp_path)
    assert te.packed[name].group_size == 32
    np.testing.assert_array_equal(te.packed[name].dequantize(torch.bfloat16).float().numpy(), want[name])


def test_mlx_other_bit_width_is_refused(tmp_path: Path) -> None:
    _mlx_folder(tmp_path, {"model.layers.0.self_attn.v_proj.weight": {"bits": 8}})
    with pytest.raises(BonsaiFormatError) as e:
        read_te_mlx(tmp_path)
    assert e.value.tensor == "model.layers.0.self_attn.v_proj.weight" and "8-bit codes" in str(e.value)
