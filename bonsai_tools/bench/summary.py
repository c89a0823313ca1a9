"""The flat ``<run>-summary.json`` every benchmark run writes next to its full report:
``{"gpu", "date", "rows": [{"path", "resolution", "batch", "ms", "ratio_vs_bf16", ...}]}``.

Path names: ``stock-bf16``, ``stock-fp8-fast``, ``stock-fp8-scaled`` for ComfyUI's own models and
``bonsai-<backend>`` for ours (``bonsai-auto``, ``bonsai-fp8``, ``bonsai-fp8-rowwise``, ...); a
``-compile`` (Inductor) or ``-cudagraphs`` suffix marks a ``torch.compile``d model. Ratios are to stock bf16 of the same run,
variant, resolution, batch and compile setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STOCK = ("bf16", "stock-fp8-fast", "stock-fp8-scaled")


def path_name(model: str) -> str:
    """Report model key -> summary path name."""
    base, _, compiled = model.partition("+")  # "<model>+compile" / "<model>+cudagraphs"
    if base == "bf16":
        name = "stock-bf16"
    elif base.startswith("stock-"):
        name = base
    else:
        name = "bonsai-" + base.replace("_", "-")
    return name + (f"-{compiled}" if compiled else "")


def step_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (variant, model, resolution x batch) of a bench-model report."""
    rows: list[dict[str, Any]] = []
    for var in report.get("variants", []):
        models = var["models"]
        for model, entry in models.items():
            _, plus, how = model.partition("+")
            base_key = f"bf16+{how}" if plus else "bf16"
            base = models.get(base_key, {}).get("steps", {})
            for cfg, s in entry.get("steps", {}).items():
                res, batch = (int(v) for v in cfg.split("x"))
                ref = base.get(cfg)
                rows.append(
                    {
                        "path": path_name(model),
                        "variant": var["variant"],
                        "resolution": res,
                        "batch": batch,
                        "ms": round(s["ms_median"], 2),
                        "ratio_vs_bf16": round(s["ms_median"] / ref["ms_median"], 3) if ref else None,
                        "peak_vram_gb": round(s["peak_vram_bytes"] / 1e9, 2),
                        "cosine_vs_bf16": entry.get("cosine_vs_bf16"),
                        "measure": "transformer step",
                    }
                )
    return rows


def write_summary(out_dir: Path, name: str, env: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    path = out_dir / f"{name}-summary.json"
    doc = {"gpu": env.get("gpu"), "date": env.get("date"), "torch": env.get("torch"), "comfyui": env.get("comfyui"), "rows": rows}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
