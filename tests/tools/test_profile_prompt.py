"""bench-profile's bookkeeping (no GPU): kernel names sorted into categories, the per-node split
of a prompt, and the report's table and flat summary rows."""

from __future__ import annotations

from bonsai_tools.bench import profile_prompt as pp


def test_kernel_categories() -> None:
    assert pp.kernel_category("_dequant_kernel_src") == "packed_prep"
    assert pp.kernel_category("_prep_kernel_src") == "packed_prep"
    assert pp.kernel_category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>") == "attention"
    assert pp.kernel_category("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert pp.kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64") == "gemm"
    assert pp.kernel_category("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "conv"
    assert pp.kernel_category("triton_poi_fused_add_mul_0") == "other"


def test_split_and_report() -> None:
    nodes = [("BonsaiModelLoader", 0, 0, 0.5), ("CLIPTextEncode", 0, 0, 0.1), ("SamplerCustomAdvanced", 0, 0, 0.2),
             ("VAEDecode", 0, 0, 0.05), ("SaveImage", 0, 0, 0.02), ("CFGGuider", 0, 0, 0.001)]  # fmt: skip
    split = pp._split(nodes, 0.9)
    assert split["load"] == 0.5 and split["sampler"] == 0.2 and split["other_nodes"] == 0.001
    assert abs(split["executor_overhead"] - (0.9 - 0.871)) < 1e-9 and split["prompt"] == 0.9
    entry = {"first": split, "warm": pp._split(nodes[1:], 0.4), "step": {"wall_ms": 50.0, "gpu_busy_ms": 40.0, "gpu_idle_ms": 10.0, "gemm_ms": 30.0}}
    report = {"env": {"gpu": "X", "date": "d", "torch": "t", "triton": "tr"}, "runs": [{"path": "bonsai-auto", "compile_backend": "cudagraphs", "resolutions": {"512": entry}}]}
    md = pp.to_markdown(report)
    assert "| bonsai-auto-cudagraphs | 512² | 0.400 |" in md
    rows = pp.summary_rows(report)
    assert {r["path"] for r in rows} == {"bonsai-auto-cudagraphs"}
    assert sorted(r["measure"].split(" ")[0] for r in rows) == ["step", "whole"]
