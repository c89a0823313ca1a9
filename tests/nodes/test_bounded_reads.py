"""In ComfyUI: a crafted gemlite pack describing more than its file holds is refused when the prompt
is queued (one line naming the tensor), and the unpacked releases' bf16 text encoder with one NaN
is refused naming the shard and the tensor instead of rendering an all-black image. Issue 18,
items 1 and 4."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from harness.crafted_archives import stride0_gemlite_pack

pytestmark = pytest.mark.comfyui

MODULE = "transformer_blocks.0.attn.to_q"


def test_stride0_gemlite_pack_is_refused_at_queue_time(comfyui: Any, module_models: Path) -> None:
    stride0_gemlite_pack(module_models / "bonsai" / "stride0-snap" / "transformer-gemlite-int2", only=MODULE)
    loader = comfyui.node_class("BonsaiModelLoader")
    problem = loader.validate_inputs(model_name="stride0-snap/")
    assert isinstance(problem, str) and "\n" not in problem, problem
    assert f"tensor '{MODULE}.W_q'" in problem and "stride 0" in problem, problem


def test_nan_in_the_bf16_text_encoder_is_refused_naming_shard_and_tensor(comfyui: Any, module_models: Path, te_node: Any) -> None:
    synth = comfyui.pack("bonsai_tools.synth")
    folder = synth.make_snapshot_fixture("binary", "unpacked", module_models / "bonsai", size="tiny", seed=4)
    te_dir = folder / "text_encoder"
    key = "model.layers.0.self_attn.v_proj.weight"
    shard = te_dir / json.loads((te_dir / "model.safetensors.index.json").read_text())["weight_map"][key]
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start = 8 + n + json.loads(raw[8 : 8 + n])[key]["data_offsets"][0]
    raw[start + 6 : start + 8] = torch.tensor([float("nan")], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as ei:  # the pack's BonsaiFormatError is a ValueError
        te_node.load_clip(te_dir)
    assert type(ei.value).__name__ == "BonsaiFormatError", repr(ei.value)
    assert ei.value.path == str(shard) and ei.value.tensor == key and "finite" in str(ei.value), str(ei.value)


def test_nan_in_the_vae_is_refused_naming_file_and_tensor(comfyui: Any, module_models: Path) -> None:
    """The VAE's dense weights are value-checked like every other weight (and read from the file whose
    header was checked). Before: a NaN decoder weight loaded and rendered a black image."""
    synth = comfyui.pack("bonsai_tools.synth")
    vae_dir = synth.make_vae_fixture("tiny", 5, module_models / "bonsai" / "nan-vae" / "vae")
    weights = vae_dir / "diffusion_pytorch_model.safetensors"
    key = "decoder.conv_out.weight"
    raw = bytearray(weights.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + n])[key]
    start = 8 + n + entry["data_offsets"][0]
    nan = torch.tensor([float("nan")], dtype=getattr(torch, {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[entry["dtype"]]))
    raw[start : start + nan.element_size()] = nan.view(torch.uint8).numpy().tobytes()
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as ei:
        comfyui.pack("nodes.vae").load_flux2_vae(vae_dir)
    assert type(ei.value).__name__ == "BonsaiFormatError", repr(ei.value)
    assert ei.value.path == str(weights) and ei.value.tensor == key and "finite" in str(ei.value), str(ei.value)
