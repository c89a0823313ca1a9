"""``bench-model --linear-sweep``: per-layer times of the fast paths vs bf16 ``F.linear`` for the
linears ComfyUI runs (BFL fused shapes), summed per step with each shape's count."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def linear_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Per-layer times of the fast paths vs bf16 ``F.linear`` for the linears ComfyUI runs
    (BFL fused shapes), summed per step with each shape's count. Uses the top-level core."""
    import torch

    from bonsai_core.dispatch.tune import klein_linear_shapes, time_candidate
    from bonsai_core.klein import KLEIN_4B, bfl_quantized_layers, diffusers_quantized_linears
    from bonsai_core.packing import PackedWeight, dequantize
    from bonsai_core.packing import pack_codes as core_pack
    from bonsai_image.kernels import fp8_blockwise as fp
    from bonsai_image.kernels import triton_dequant as td

    device = torch.device("cuda")
    fused = diffusers_quantized_linears(KLEIN_4B)
    counts: dict[tuple[int, int], int] = {}
    for parts in bfl_quantized_layers(KLEIN_4B).values():
        shape = (fused[parts[0]][1], sum(fused[p][0] for p in parts))
        counts[shape] = counts.get(shape, 0) + 1
    variants = fp.FP8BlockwiseBackend().variants(device)
    rows = []
    for k, n in klein_linear_shapes(KLEIN_4B, "bfl"):
        for bits in args.sweep_bits:
            codes = core_pack(torch.randint(0, 2 if bits == 1 else 3, (n, k), dtype=torch.uint8, device=device), bits)
            sc = (torch.rand(n, k // 128, device=device) * 0.02 + 1e-4).half()
            pw = PackedWeight(codes, sc, bits)
            w = dequantize(codes, sc, bits, torch.bfloat16)
            for m in args.sweep_m:
                x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                row: dict[str, Any] = {"k": k, "n": n, "bits": bits, "m": m, "count": counts.get((k, n), 0), "ms": {}}
                cands: dict[str, Any] = {
                    "bf16": lambda x=x, w=w: torch.nn.functional.linear(x, w),
                    "dequant_only": lambda pw=pw: td.unpack_into(pw, td.SCRATCH.get(device, torch.bfloat16, (pw.out_features, pw.in_features))),
                    "triton_dequant": lambda x=x, pw=pw: td.TritonDequantBackend().matmul(x, pw, {}),
                    "act_quant_only": lambda x=x, pw=pw: fp.quantize_activations(x, pw.group_size),
                }
                for v in variants:
                    cands[f"fp8/{v}"] = lambda v=v, x=x, pw=pw: fp.run_variant(v, x, pw)
                for name, fn in cands.items():
                    try:
                        row["ms"][name] = time_candidate(fn, device, warmup=2, reps=10)
                    except Exception as e:  # noqa: BLE001 - a variant that fails to compile is reported, not fatal
                        row["ms"][name] = None
                        row.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e)[:300]}"
                y = fp.run_variant(variants[0], x, pw).float()
                ref = torch.nn.functional.linear(x, w).float()
                row["fp8_rel_err"] = float((y - ref).norm() / ref.norm())
                rows.append(row)
                best = min(
                    (v for v in row["ms"] if v.startswith("fp8/") and row["ms"][v] is not None), key=lambda v: row["ms"][v], default=None
                )
                log.info(
                    "K%d N%d b%d M%d: bf16 %.3f, triton_dequant %.3f, best fp8 %s %.3f ms",
                    k, n, bits, m, row["ms"]["bf16"], row["ms"]["triton_dequant"] or -1, best, row["ms"].get(best) or -1,
                )  # fmt: skip
            del codes, sc, w, pw
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        t = totals.setdefault(f"b{row['bits']}-M{row['m']}", {})
        for name, ms in row["ms"].items():
            if ms is not None:
                t[name] = t.get(name, 0.0) + ms * row["count"]
        fp8 = [ms for name, ms in row["ms"].items() if name.startswith("fp8/") and ms is not None]
        if fp8:
            t["fp8_best_per_shape"] = t.get("fp8_best_per_shape", 0.0) + min(fp8) * row["count"]
    return {"rows": rows, "per_step_totals_ms": totals}
