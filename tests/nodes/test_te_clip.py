"""The packed 4-bit TE as a stock CLIP inside a real ComfyUI (CPU, tiny Qwen3 config).

Reference: ComfyUI's own ``klein_te`` built through ``comfy.sd.CLIP`` with stock ``manual_cast``
ops and DENSE weights equal to our dequantized ones. Only the tiny config runs here; the real
Qwen3-4B (36 x 2560) is checked structurally (meta device) and arithmetically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytestmark = pytest.mark.comfyui

PROMPTS = ["a red fox", "Ein Café in Paris bei Nacht, (neon:1.2) signs, 4k"]


def _encode_graph(label: str, text: str) -> dict:
    return {
        "1": {"class_type": "BonsaiTextEncoderLoader", "inputs": {"text_encoder": label}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": text}},
        "3": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["2", 0], "label": "cond"}},
        "4": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "clip"}},
    }


def _reference_clip(te_node: ModuleType, te_pack_formats: ModuleType, folder: Path):  # noqa: ANN202
    te = te_pack_formats.read_te(folder)
    return te_node.build_clip(te.config, te.dequantized_state_dict(torch.float32), operations=None, dtype=torch.float32)


@pytest.fixture(scope="session")
def te_formats(comfyui) -> ModuleType:  # noqa: ANN001
    return comfyui.pack("bonsai_core.te_formats")


def test_loader_lists_snapshot_and_text_encoder_folders(te_node: ModuleType, te_labels: dict[str, str], tiny_tes: dict[str, Path]) -> None:
    folders = te_node.list_te_folders()
    for key, label in te_labels.items():
        assert folders[label] == tiny_tes[key]
    schema = te_node.BonsaiTextEncoderLoader.define_schema()
    assert set(te_labels.values()) <= set(schema.inputs[0].options)


@pytest.mark.parametrize(("which", "text"), [("hqq", PROMPTS[1]), ("hqq_layers", PROMPTS[0]), ("mlx", PROMPTS[0])])
def test_embeddings_equal_stock_qwen3_with_dequantized_weights(
    comfyui, te_node, te_formats, tiny_tes, te_labels, which: str, text: str
) -> None:  # noqa: ANN001
    """Stock CLIPTextEncode on our CLIP == stock CLIPTextEncode on ComfyUI's Qwen3 with dense weights."""
    import comfy.ops
    import comfy.text_encoders.flux
    import comfy.text_encoders.llama

    import nodes

    ref = _reference_clip(te_node, te_formats, tiny_tes[which])
    # the reference is ComfyUI's model with ComfyUI's ops: nothing of ours but the config
    ref_qwen = ref.cond_stage_model.qwen3_4b
    assert isinstance(ref.cond_stage_model, comfy.text_encoders.flux.Flux2TEModel)
    assert isinstance(ref_qwen.transformer, comfy.text_encoders.llama.Qwen3_4B)
    assert type(ref_qwen.transformer.model.layers[0].mlp.down_proj) is comfy.ops.manual_cast.Linear
    assert isinstance(ref.tokenizer, comfy.text_encoders.flux.KleinTokenizer)
    hidden = te_formats.read_config(tiny_tes[which])["hidden_size"]
    result = comfyui.run(_encode_graph(te_labels[which], text))
    assert result.success, result.error
    ((cond, extra),) = result.captured["cond"]
    ((want, want_extra),) = nodes.CLIPTextEncode().encode(ref, text)[0]
    assert cond.shape == (1, 512, 3 * hidden)
    assert torch.isfinite(cond).all() and cond.abs().mean() > 0
    assert torch.equal(cond, want), (cond - want).abs().max()
    assert torch.equal(extra["attention_mask"], want_extra["attention_mask"])


@pytest.mark.parametrize("which", ["hqq", "mlx"])
def test_state_holds_packed_bytes(te_node, te_formats, tiny_tes, which: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    te = te_formats.read_te(tiny_tes[which])
    with caplog.at_level(logging.DEBUG):
        clip = te_node.load_packed_clip(tiny_tes[which])
    # every tensor found its module: ComfyUI logs missing/unexpected CLIP keys
    assert not [r.getMessage() for r in caplog.records if "clip missing" in r.getMessage() or "clip unexpected" in r.getMessage()]
    patcher = clip.patcher
    model = patcher.model
    # ComfyUI's accounting (what it moves and frees) is the packed size (+ the 4-byte logit_scale)
    assert patcher.model_size() == te.packed_nbytes + 4
    linears = [m for m in model.modules() if isinstance(m, te_node.Packed4BitLinear)]
    assert len(linears) == 7 * 28
    lin_bytes = sum(t.numel() * t.element_size() for m in linears for t in m.state_dict().values())
    lin_bf16 = sum(m.in_features * m.out_features * 2 for m in linears)
    assert lin_bytes < 0.32 * lin_bf16  # 4-bit codes + fp16/bf16 scale and offset per 64
    for m in linears:
        assert {k for k, _ in m.named_parameters()} == set()
        assert m.weight_codes.dtype == torch.uint8 and m.weight_codes.shape == (m.out_features, m.in_features // 2)
    # no floating tensor anywhere in the model is as large as a dense linear
    biggest_linear = max(m.in_features * m.out_features for m in linears)
    emb = model.qwen3_4b.transformer.model.embed_tokens
    for name, t in model.state_dict().items():
        if t.is_floating_point() and ".embed_tokens." not in name:
            assert t.numel() < biggest_linear / 16, name
    if which == "mlx":  # MLX quantizes the embedding too: the whole model is ~4.5 bits per weight
        assert emb.weight is None and emb.weight_codes.dtype == torch.uint8
        assert patcher.model_size() < 0.3 * te.dense_equivalent_nbytes(torch.bfloat16)


def test_model_management_loads_and_offloads(comfyui, te_node, tiny_tes) -> None:  # noqa: ANN001
    import comfy.model_management as mm

    clip = te_node.load_packed_clip(tiny_tes["hqq"])
    assert clip.patcher.load_device == mm.text_encoder_device()
    assert clip.patcher.offload_device == mm.text_encoder_offload_device()
    first = clip.encode_from_tokens(clip.tokenize("a red fox"))
    assert any(lm.model is clip.patcher for lm in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(lm.model is clip.patcher for lm in mm.current_loaded_models)
    assert all(b.device == clip.patcher.offload_device for b in clip.patcher.model.buffers())
    # partial (lowvram) loading leaves the packed buffers where they are; forward moves them per call
    clip.patcher.patch_model(device_to=clip.patcher.load_device, lowvram_model_memory=1024)
    try:
        clip.cond_stage_model.set_clip_options({"execution_device": clip.patcher.load_device})
        again = clip.cond_stage_model.encode_token_weights(clip.tokenize("a red fox"))[0]
    finally:
        clip.patcher.unpatch_model(device_to=clip.patcher.offload_device)
    assert torch.equal(first, again)


def test_full_size_config_is_stock_qwen3_4b(te_node, te_formats) -> None:  # noqa: ANN001
    """The real Qwen3-4B config.json builds exactly ComfyUI's Qwen3_4B (on the meta device)."""
    import comfy.ops
    import comfy.text_encoders.llama as llama

    from_json = te_node.ConfiguredQwen3(
        te_node.llama_config(comfyui_te_fixture_4b(te_formats)), torch.bfloat16, "meta", comfy.ops.manual_cast
    )
    stock = llama.Qwen3_4B({}, torch.bfloat16, "meta", comfy.ops.manual_cast)
    assert {k: v.shape for k, v in from_json.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    a, b = from_json.model.config, stock.model.config
    for f in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_theta",
        "head_dim",
        "q_norm",
        "k_norm",
    ):
        assert getattr(a, f) == getattr(b, f), f
    packed = te_node.ConfiguredQwen3(te_node.llama_config(comfyui_te_fixture_4b(te_formats)), torch.bfloat16, "meta", te_node.Packed4BitOps)
    assert sum(isinstance(m, te_node.Packed4BitLinear) for m in packed.modules()) == 252


def comfyui_te_fixture_4b(te_formats: ModuleType) -> dict:
    import importlib

    fixture = importlib.import_module("bonsai_tools.synth")
    return json.loads(json.dumps(fixture.QWEN3_4B_CONFIG))


def test_tokenizer_matches_shipped_tokenizer(te_node, te_pack, tiny_tes) -> None:  # noqa: ANN001
    ids = te_node.verify_tokenizer(str(tiny_tes["hqq"] / "tokenizer"))
    import comfy.text_encoders.flux

    # <|im_start|>user\n ... <|im_start|>assistant\n<think>\n\n</think>\n\n
    assert ids[:3] == [151644, 872, 198] and ids[-7:] == [151644, 77091, 198, 151667, 271, 151668, 271]
    klein = comfy.text_encoders.flux.KleinTokenizer()
    fox = [t for t, _ in klein.tokenize_with_weights("a red fox")["qwen3_4b"][0]]
    assert fox[:7] == [151644, 872, 198, 64, 2518, 38835, 151645] and len(fox) == 512  # Klein pads every prompt to 512 tokens


def test_tokenizer_mismatch_is_an_error(te_node, te_pack, tiny_tes, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    tok = tmp_path / "tokenizer"
    shutil.copytree(tiny_tes["hqq"] / "tokenizer", tok)
    # a shipped vocabulary that numbers two of the probe's words the other way round
    vocab = json.loads((tok / "vocab.json").read_text(encoding="utf-8"))
    vocab["\u0120red"], vocab["\u0120fox"] = vocab["\u0120fox"], vocab["\u0120red"]
    (tok / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(te_pack.BonsaiFormatError, match="disagrees with the shipped tokenizer"):
        te_node.verify_tokenizer(str(tok))


def test_folder_chat_template_is_never_rendered(te_node, tiny_tes, tmp_path: Path) -> None:  # noqa: ANN001
    """The probe uses ComfyUI's fixed Klein template: a folder template that fails when rendered changes nothing."""
    import shutil

    tok = tmp_path / "tokenizer"
    shutil.copytree(tiny_tes["hqq"] / "tokenizer", tok)
    (tok / "chat_template.jinja").write_text("{{ raise_exception('the folder template was rendered') }}", encoding="utf-8")
    assert te_node.verify_tokenizer(str(tok)) == te_node.verify_tokenizer(str(tiny_tes["hqq"] / "tokenizer")) != []


def test_unloadable_shipped_tokenizer_only_warns(te_node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    (tmp_path / "vocab.json").write_text("not json")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}')
    with caplog.at_level(logging.WARNING):
        assert te_node.verify_tokenizer(str(tmp_path)) == []
    assert "cannot load the shipped tokenizer" in caplog.text


def test_corrupt_file_fails_the_node_naming_the_file(comfyui, comfy_models: Path, tiny_tes) -> None:  # noqa: ANN001
    import shutil

    bad = comfy_models / "text_encoders" / "bonsai-te-broken"
    shutil.copytree(tiny_tes["hqq_layers"], bad)
    data = (bad / "qmodel.pt").read_bytes()
    (bad / "qmodel.pt").write_bytes(data[: len(data) // 3])
    result = comfyui.run(_encode_graph("text_encoders/bonsai-te-broken", "x"))
    # refused when queued, as a truncated transformer or VAE is (its zip directory, at the end, is gone)
    assert not result.valid, "a truncated text encoder passed queue-time validation"
    details = json.dumps(result.node_errors)
    assert "qmodel.pt" in details and "truncated" in details, details


def test_stock_cliploader_flux2_is_untouched(comfyui, comfy_models: Path, te_node) -> None:  # noqa: ANN001
    """Our pack patches nothing global: stock CLIPLoader(type=flux2) on a Qwen3-4B-shaped dense file
    still detects QWEN3_4B and builds stock klein_te + KleinTokenizer with stock ops."""
    import comfy.ops
    import comfy.sd
    import comfy.text_encoders.flux
    import comfy.text_encoders.llama
    from safetensors.torch import save_file

    import nodes

    te_node.load_packed_clip  # noqa: B018  (the pack is loaded and has been used by other tests)
    assert comfy.ops.manual_cast.Linear.__module__ == "comfy.ops"
    assert comfy.text_encoders.flux.klein_te.__module__ == "comfy.text_encoders.flux"
    assert comfy.sd.load_clip.__module__ == "comfy.sd"
    # Only the tensors detection reads (full width 2560): the model itself is built by ComfyUI.
    sd = {
        "model.layers.0.post_attention_layernorm.weight": torch.ones(2560, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_norm.weight": torch.ones(128, dtype=torch.bfloat16),
        "model.norm.weight": torch.ones(2560, dtype=torch.bfloat16),
    }
    save_file(sd, str(comfy_models / "text_encoders" / "qwen3_4b_detect_only.safetensors"))
    assert comfy.sd.detect_te_model(sd) == comfy.sd.TEModel.QWEN3_4B
    (clip,) = nodes.CLIPLoader().load_clip("qwen3_4b_detect_only.safetensors", type="flux2")
    q = clip.cond_stage_model.qwen3_4b
    assert type(q.transformer) is comfy.text_encoders.llama.Qwen3_4B
    assert type(q.transformer.model.layers[0].self_attn.q_proj) is comfy.ops.manual_cast.Linear
    assert q.transformer.model.config.num_hidden_layers == 36 and q.layer == [9, 18, 27]
    assert type(clip.tokenizer) is comfy.text_encoders.flux.KleinTokenizer
    assert [t for t, _ in clip.tokenize("a red fox")["qwen3_4b"][0]][:7] == [151644, 872, 198, 64, 2518, 38835, 151645]
    del clip, q


def test_unpacked_release_bf16_text_encoder_is_listed_and_loads(comfyui, module_models: Path, te_node) -> None:  # noqa: ANN001
    # The unpacked releases ship a diffusers text_encoder/ (bf16 Qwen3, sharded): listed by the loader, so it must load.
    from safetensors.torch import load_file

    snapshot = comfyui.pack("bonsai_tools.synth")
    tok = comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    folder = snapshot.make_snapshot_fixture("binary", "unpacked", module_models / "bonsai", size="tiny", seed=3, tokenizer_src=tok)
    label = f"bonsai/{folder.name}/text_encoder"
    assert label in te_node.list_te_folders()
    result = comfyui.run(_encode_graph(label, PROMPTS[1]))
    assert result.success, result.error
    # Reference: ComfyUI's klein_te with stock dense ops on the shipped shards, read here with safetensors.
    te_dir = folder / "text_encoder"
    sd = {k: v for f in sorted(te_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items() if not k.startswith("lm_head.")}
    config = json.loads((te_dir / "config.json").read_text())
    ref = te_node.build_clip(config, sd, operations=None, dtype=sd["model.norm.weight"].dtype)
    want = ref.encode_from_tokens_scheduled(ref.tokenize(PROMPTS[1]))[0][0]
    got = result.captured["cond"][0][0]
    assert got.shape == want.shape == (1, 512, 384) and torch.equal(got, want)
