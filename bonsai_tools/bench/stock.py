"""The stock ComfyUI FP8 baselines a Klein user would pick, built from the same synthetic weights.

* ``stock-fp8-fast``: ``UNETLoader`` with weight dtype ``fp8_e4m3fn_fast`` (model options
  ``dtype=float8_e4m3fn`` + ``fp8_optimizations``): every linear weight is cast to e4m3 with no
  scale, activations are clamped to +-448 and cast, and ``torch._scaled_mm`` runs per tensor.
* ``stock-fp8-scaled``: a ``comfy_quant`` checkpoint, the format Comfy-Org/BFL ship: for each
  layer Bonsai packs, ``weight`` = e4m3 of ``W / s`` with one per-tensor fp32 ``weight_scale``
  ``s = amax / 448``, and a ``comfy_quant`` entry ``{"format": "float8_e4m3fn"}``; ComfyUI's
  ``MixedPrecisionOps`` run those layers through comfy-kitchen's FP8 layout (no ``input_scale``
  stored, so activations are cast with scale 1, as in the shipped files). The 9 edge layers stay
  bf16, exactly as in the Bonsai model.

Both are loaded through ``comfy.sd.load_diffusion_model_state_dict`` like the bf16 baseline.
"""

from __future__ import annotations

import json
from typing import Any

STOCK_FP8_PATHS = ("stock-fp8-fast", "stock-fp8-scaled")
_E4M3_MAX = 448.0


def fp8_scaled_state_dict(dense: dict[str, Any], packed: dict[str, Any]) -> dict[str, Any]:
    """``dense`` (bf16 baseline) with every layer that ``packed`` holds as codes turned into a
    per-tensor-scaled e4m3 ``comfy_quant`` layer."""
    import torch

    out: dict[str, Any] = {}
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")), dtype=torch.uint8)
    for key, t in dense.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is None or f"{layer}.weight_scale" not in packed:
            out[key] = t
            continue
        w = t.float()
        scale = (w.abs().amax() / _E4M3_MAX).clamp_min(1e-12)
        out[key] = (w / scale).clamp(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)
        out[f"{layer}.weight_scale"] = scale.reshape(()).to(torch.float32)
        out[f"{layer}.comfy_quant"] = conf.clone()
        del w
    return out


def stock_model_options(path: str) -> dict[str, Any]:
    """``model_options`` for ``comfy.sd.load_diffusion_model_state_dict`` as UNETLoader sets them."""
    import torch

    if path == "stock-fp8-fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if path == "stock-fp8-scaled":
        return {}  # the comfy_quant entries select MixedPrecisionOps; compute stays bf16
    if path == "stock-bf16":
        return {"dtype": torch.bfloat16}
    raise ValueError(f"unknown stock path {path!r}")


def build_stock(path: str, dense: dict[str, Any], packed: dict[str, Any], device: Any) -> Any:
    """ComfyUI's FLUX.2 diffusion model for stock ``path``, on ``device``, in eval mode."""
    import comfy.sd

    sd = fp8_scaled_state_dict(dense, packed) if path == "stock-fp8-scaled" else dict(dense)
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=stock_model_options(path), disable_dynamic=True)
    if patcher is None:
        raise RuntimeError(f"ComfyUI did not detect a FLUX.2 model in the {path} state dict")
    dm = patcher.model.diffusion_model
    dm.to(device)
    dm.eval()
    return dm


def ops_summary(dm: Any) -> dict[str, int]:
    """How many linears run which stock op (proves the FP8 path was really taken)."""
    counts: dict[str, int] = {}
    for m in dm.modules():
        w = getattr(m, "weight", None)
        if w is None or not hasattr(m, "in_features"):
            continue
        kind = f"{type(m).__qualname__}:{getattr(w, 'dtype', None)}"
        if type(w).__name__ == "QuantizedTensor":
            kind = f"{type(m).__qualname__}:QuantizedTensor({getattr(m, 'quant_format', '?')})"
        counts[kind] = counts.get(kind, 0) + 1
    return counts
