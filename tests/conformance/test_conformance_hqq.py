"""HQQ text-encoder packs written by hqq 0.2.8.post1 itself (the version the release pins): a tiny
Qwen3 from transformers, quantized with ``AutoHQQHFModel.quantize_model`` (4-bit, group size 64 and
128, axis 0 and 1, ``view_as_float`` off and on, tied ``lm_head``; and one 2-bit pack) and saved
with ``save_quantized``.

The reader (and, with ComfyUI, the text-encoder loader node) must give exactly what hqq's own
``HQQLinear.dequantize()`` gives after ``from_quantized`` (fp16, hqq's compute dtype), or one line
naming the module for a combination it cannot read (axis 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.te_formats import read_te

hqq_quantize = pytest.importorskip("hqq.core.quantize", reason="hqq==0.2.8.post1 is installed by .ci/run (DISABLE_CUDA=1)")
hqq_hf = pytest.importorskip("hqq.models.hf.base")
transformers = pytest.importorskip("transformers")

# (axis, view_as_float, group_size, nbits): what a save can hold; axis 1 is what the release and hqq's gemlite backend use
MATRIX = [(1, False, 64, 4), (1, True, 64, 4), (1, False, 128, 4), (0, False, 64, 4), (0, True, 64, 4), (1, False, 64, 2)]


def _tiny_qwen3() -> torch.nn.Module:
    cfg = transformers.Qwen3Config(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=320,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    return transformers.Qwen3ForCausalLM(cfg).eval()


def save_with_hqq(out: Path, axis: int, view_as_float: bool, group_size: int, nbits: int) -> Path:
    model = _tiny_qwen3()
    config = hqq_quantize.BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis, view_as_float=view_as_float)
    hqq_hf.AutoHQQHFModel.quantize_model(model, quant_config=config, compute_dtype=torch.float16, device="cpu")
    out.mkdir(parents=True)
    hqq_hf.AutoHQQHFModel.save_quantized(model, str(out))
    return out


def hqq_dequantized(folder: Path) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Every HQQLinear's ``dequantize()`` after hqq's own ``from_quantized`` of the saved folder."""
    model = hqq_hf.AutoHQQHFModel.from_quantized(str(folder), device="cpu", compute_dtype=torch.float16)
    weights = {name + ".weight": m.dequantize() for name, m in model.named_modules() if isinstance(m, hqq_quantize.HQQLinear)}
    return weights, model


@pytest.fixture(scope="module", params=MATRIX, ids=lambda p: f"axis{p[0]}-vaf{int(p[1])}-g{p[2]}-{p[3]}bit")
def pack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[int, bool, int, int], Path]:
    return request.param, save_with_hqq(tmp_path_factory.mktemp("hqq") / "text_encoder-hqq-4bit", *request.param)


def test_reader_equals_hqq_dequantize(pack: tuple[tuple[int, bool, int, int], Path]) -> None:
    (axis, _, gs, nbits), folder = pack
    if nbits != 4:
        with pytest.raises(BonsaiFormatError) as ei:
            read_te(folder)
        assert ei.value.tensor == "model.layers.0.self_attn.q_proj" and f"nbits {nbits} is not 4bit_u8 / 4" in str(ei.value)
        return
    if axis == 0:
        with pytest.raises(BonsaiFormatError) as ei:
            read_te(folder)
        assert ei.value.path == str(folder / "qmodel.pt") and ei.value.tensor == "model.layers.0.self_attn.q_proj"
        assert "HQQ axis=0" in str(ei.value) and "re-quantize with axis=1" in str(ei.value) and "\n" not in str(ei.value)
        return
    te = read_te(folder)
    reference, model = hqq_dequantized(folder)
    assert te.layout == "hqq" and te.lm_head == "tied" and set(te.packed) == set(reference)
    for key, want in reference.items():
        assert want.dtype == torch.float16
        assert te.packed[key].group_size == gs, key  # from each layer's group_size entry, not from sizes
        assert torch.equal(te.packed[key].dequantize(torch.float16), want), key
    for key, tensor in model.state_dict().items():
        if key in te.dense:
            assert torch.equal(te.dense[key], tensor), key
    assert torch.equal(model.lm_head.weight, te.dense["model.embed_tokens.weight"])  # tied: the stored lm_head is the embedding


@pytest.mark.comfyui
def test_loader_node_equals_hqq_dequantize(comfyui, pack: tuple[tuple[int, bool, int, int], Path]) -> None:  # noqa: ANN001
    """The text-encoder loader's packed linears, run on an identity input, give hqq's weights exactly
    (axis 0, 2-bit: the loader ends in the reader's one line)."""
    (axis, _, _, nbits), folder = pack
    te_node = comfyui.pack("nodes.text_encoder")
    if axis == 0 or nbits != 4:
        with pytest.raises(Exception) as ei:
            te_node.load_packed_clip(folder, check_tokenizer=False)
        assert type(ei.value).__name__ == "BonsaiFormatError" and ("HQQ axis=0" in str(ei.value) or nbits != 4)
        assert "\n" not in str(ei.value)
        return
    clip = te_node.load_packed_clip(folder, check_tokenizer=False)
    reference, _ = hqq_dequantized(folder)
    linears = {name: m for name, m in clip.cond_stage_model.named_modules() if isinstance(m, te_node.Packed4BitLinear)}
    assert len(linears) == len(reference)
    for key, want in reference.items():
        module = next(m for name, m in linears.items() if name.endswith(key[: -len(".weight")].removeprefix("model.")))
        eye = torch.eye(module.in_features, dtype=torch.float16)
        assert torch.equal(module(eye).t(), want), key
