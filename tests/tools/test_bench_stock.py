"""The stock baselines the benchmarks compare against are what ComfyUI really loads, and the flat
summary names and ratios every path as the issue asks."""

from __future__ import annotations

import json

import pytest
import torch

from bonsai_tools.bench.stock import fp8_scaled_state_dict, ops_summary, stock_model_options
from bonsai_tools.bench.summary import path_name, step_rows


def test_fp8_scaled_state_dict_quantizes_exactly_the_packed_layers() -> None:
    g = torch.Generator().manual_seed(0)
    dense = {
        "a.weight": torch.randn(64, 256, generator=g).bfloat16(),
        "b.weight": torch.randn(32, 128, generator=g).bfloat16(),
        "b.bias": torch.randn(32, generator=g).bfloat16(),
        "norm.scale": torch.ones(256).bfloat16(),
    }
    packed_marks = {"a.weight_scale": None}  # only layer "a" is packed in the Bonsai file
    out = fp8_scaled_state_dict(dense, packed_marks)
    w8, scale = out["a.weight"], out["a.weight_scale"]
    assert w8.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.ndim == 0
    assert scale.item() == pytest.approx(dense["a.weight"].float().abs().max().item() / 448.0, rel=1e-6)
    assert w8.float().abs().max().item() == 448.0  # per-tensor absmax scaling uses the full e4m3 range
    back = w8.float() * scale
    rel = ((back - dense["a.weight"].float()).norm() / dense["a.weight"].float().norm()).item()
    assert 0 < rel < 0.05  # e4m3 rounding: lossy, but only by its 3 mantissa bits
    assert json.loads(bytes(out["a.comfy_quant"].tolist()).decode()) == {"format": "float8_e4m3fn"}
    for key in ("b.weight", "b.bias", "norm.scale"):  # the rest stays as it was
        assert out[key] is dense[key]
    assert "b.comfy_quant" not in out and "b.weight_scale" not in out


def test_stock_model_options_match_unet_loader() -> None:
    fast = stock_model_options("stock-fp8-fast")
    assert fast == {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}  # UNETLoader "fp8_e4m3fn_fast"
    assert stock_model_options("stock-fp8-scaled") == {}
    with pytest.raises(ValueError, match="unknown stock path"):
        stock_model_options("stock-int4")


def test_summary_rows_name_paths_and_ratios() -> None:
    step = {"ms_median": 10.0, "peak_vram_bytes": 2e9}
    report = {
        "variants": [
            {
                "variant": "ternary",
                "models": {
                    "bf16": {"steps": {"1024x1": {**step, "ms_median": 80.0}}},
                    "stock-fp8-fast": {"steps": {"1024x1": {**step, "ms_median": 64.0}}, "cosine_vs_bf16": 0.999},
                    "fp8_rowwise": {"steps": {"1024x1": {**step, "ms_median": 60.0}}, "cosine_vs_bf16": 0.9999},
                    "bf16+compile": {"steps": {"512x1": {**step, "ms_median": 20.0}}},
                    "fp8_rowwise+compile": {"steps": {"512x1": {**step, "ms_median": 30.0}}},
                },
            }
        ]
    }
    rows = {(r["path"], r["resolution"]): r for r in step_rows(report)}
    assert set(rows) == {
        ("stock-bf16", 1024), ("stock-fp8-fast", 1024), ("bonsai-fp8-rowwise", 1024),
        ("stock-bf16-compile", 512), ("bonsai-fp8-rowwise-compile", 512),
    }  # fmt: skip
    assert rows[("bonsai-fp8-rowwise", 1024)]["ratio_vs_bf16"] == 0.75
    assert rows[("stock-fp8-fast", 1024)]["ratio_vs_bf16"] == 0.8
    assert rows[("bonsai-fp8-rowwise-compile", 512)]["ratio_vs_bf16"] == 1.5  # against compiled bf16
    assert rows[("bonsai-fp8-rowwise", 1024)]["batch"] == 1 and rows[("bonsai-fp8-rowwise", 1024)]["cosine_vs_bf16"] == 0.9999
    assert path_name("auto") == "bonsai-auto" and path_name("fp8") == "bonsai-fp8"


@pytest.mark.comfyui
def test_comfyui_loads_the_scaled_checkpoint_as_fp8_layers(comfyui) -> None:
    import comfy.sd
    import safetensors.torch

    canonical, dense = comfyui.tiny_model("ternary")
    d = comfyui.models_dir / "diffusion_models"
    csd = safetensors.torch.load_file(str(d / canonical))
    dsd = safetensors.torch.load_file(str(d / dense))
    marks = {k: v for k, v in csd.items() if k.endswith(".weight_scale")}
    assert marks, "the tiny canonical file has packed layers"
    patcher = comfy.sd.load_diffusion_model_state_dict(fp8_scaled_state_dict(dsd, marks), model_options={}, disable_dynamic=True)
    assert patcher is not None
    kinds = ops_summary(patcher.model.diffusion_model)
    # ComfyUI's mixed-precision ops hold exactly the packed layers as FP8 tensors; the edge layers stay dense
    n_fp8 = sum(v for k, v in kinds.items() if "QuantizedTensor(float8_e4m3fn)" in k)
    assert n_fp8 == len(marks), kinds
    assert sum(kinds.values()) > n_fp8
