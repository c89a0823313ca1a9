"""The markdown table of a ``bench-model`` report (one section per variant, cold starts after)."""

from __future__ import annotations

from typing import Any


def to_markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    lines = [
        f"# Bonsai FLUX.2 Klein 4B transformer step vs stock bf16 ({env['gpu']})",
        "",
        f"{env['date']}; torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, ComfyUI {env.get('comfyui')}, Python {env['python']}.",
        "ComfyUI's own FLUX.2 model (`comfy.sd.load_diffusion_model_state_dict`), full-size synthetic weights; bf16 = the same",
        f"weights dequantized to dense bf16. Per-step time = one `diffusion_model(x, t, context)` call, median of {report['args']['reps']}",
        f"after {report['args']['warmup']} warm-up calls (CUDA events); 512 text tokens. Cosine = final latents after "
        f"{report['args']['euler_steps']} Euler steps at {report['args']['euler_res']}^2 vs bf16.",
        "",
    ]
    for var in report["variants"]:
        models = var["models"]
        cfgs = list(models["bf16"]["steps"])
        head = (
            "| path | "
            + " | ".join(f"{c.replace('x', '² B')} ms (× bf16)" for c in cfgs)
            + " | peak VRAM GB | resident GB | scratch MB | cosine |"
        )
        lines += [f"## {var['variant']}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for name, m in models.items():
            if "error" in m and not m["steps"]:
                lines.append(f"| {name} | failed: {m['error']} |")
                continue
            # compiled rows are compared with compiled stock bf16
            base = models.get("bf16+" + name.partition("+")[2] if "+" in name else "bf16", models["bf16"])["steps"]
            cells = []
            for c in cfgs:
                s = m["steps"].get(c)
                if s is not None and c not in base:
                    cells.append(f"{s['ms_median']:.1f}")
                    continue
                cells.append("–" if s is None else f"{s['ms_median']:.1f} ({s['ms_median'] / base[c]['ms_median']:.2f}×)")
            peak = max((s["peak_vram_bytes"] for s in m["steps"].values()), default=0) / 1e9
            cos = m.get("cosine_vs_bf16")
            lines.append(
                f"| {name} | "
                + " | ".join(cells)
                + f" | {peak:.2f} | {m.get('resident_bytes', 0) / 1e9:.3f} | {m.get('scratch_bytes', 0) / 1e6:.0f} | {'–' if cos is None else f'{cos:.6f}'} |"
            )
        lines.append("")
    for cs in report.get("cold_start", []):
        lines.append(f"Cold start ({cs['variant']}, backend {cs['backend']}), fresh process, first 1024² image:")
        for label in ("empty_caches", "persisted_caches"):
            r = cs.get(label, {})
            lines.append(
                f"- {label.replace('_', ' ')}: {r.get('process_wall_s')} s wall (import {r.get('import_s')} s, build {r.get('build_s')} s, "
                f"{report['args']['euler_steps']} steps {r.get('first_image_s')} s)"
            )
        lines.append("")
    return "\n".join(lines)
