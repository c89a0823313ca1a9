"""Full-size synthetic model files for ``bench-prompt``, laid out as a ComfyUI user has them.

One seed gives the same transformer weights in every form, so the stock and Bonsai prompts
compute the same function (the final latents are compared):

* ``models/bonsai/synthetic-<variant>/``: the release's 4-bit HQQ text encoder and VAE folders,
  where the pack's loaders find a downloaded release's;
* ``models/diffusion_models/``: the canonical Bonsai file, its exact bf16 dequantization (what
  ``UNETLoader`` loads for stock bf16 and ``fp8_e4m3fn_fast``) and a ``comfy_quant`` per-tensor
  FP8 copy of the same layers (stock "scaled" FP8, see :mod:`.stock`);
* ``models/text_encoders/``: the stock Qwen3-4B text encoder in bf16 and as ``comfy_quant`` FP8
  (its linear layers per-tensor scaled), both loadable by the stock ``CLIPLoader`` (type flux2).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DENSE = "klein-{variant}-bf16.safetensors"
FP8_SCALED = "klein-{variant}-fp8-scaled.safetensors"
CANONICAL = "bonsai-{variant}-canonical.safetensors"
TE_BF16 = "qwen_3_4b-synthetic-bf16.safetensors"
TE_FP8 = "qwen_3_4b-synthetic-fp8-scaled.safetensors"


def _save(sd: dict[str, Any], path: Path) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    tmp.rename(path)


def prepare(root: Path, variant: str, comfy_root: Path, seed: int = 0) -> dict[str, str]:
    """Write (once) every file the prompt benchmark loads under ``root/models``; returns their names."""
    import safetensors.torch
    import torch

    from bonsai_core.convert import dequantize_checkpoint
    from bonsai_tools.synth.text_encoder import TE_CONFIGS, make_te_fixture, write_dense_te
    from bonsai_tools.synth.transformer import make_fixture
    from bonsai_tools.synth.vae import make_vae_fixture

    from .stock import fp8_scaled_state_dict

    models = root / "models"
    dm_dir, te_dir, bonsai_dir = models / "diffusion_models", models / "text_encoders", models / "bonsai"
    names = {k: v.format(variant=variant) for k, v in {"dense": DENSE, "fp8_scaled": FP8_SCALED, "canonical": CANONICAL}.items()}
    names.update(te_bf16=TE_BF16, te_fp8=TE_FP8)
    tokenizer = comfy_root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    release = bonsai_dir / f"synthetic-{variant}"
    if not (release / "vae").is_dir():
        # the release's 4-bit text encoder and VAE, where the pack's loaders look for them (the
        # transformer comes from the canonical file below: the same weights, one less 1.5 GB write)
        log.info("writing a full-size synthetic text encoder and VAE under %s", release)
        make_te_fixture("hqq", "full", seed, release / "text_encoder-hqq-4bit", tokenizer_src=tokenizer)
        make_vae_fixture("full", seed, release / "vae")
    canonical = dm_dir / names["canonical"]
    if not canonical.is_file():
        dm_dir.mkdir(parents=True, exist_ok=True)
        make_fixture(variant, "full", "canonical", seed, canonical)
    dense = dm_dir / names["dense"]
    if not dense.is_file():
        dequantize_checkpoint(canonical, dense)
    fp8 = dm_dir / names["fp8_scaled"]
    if not fp8.is_file():
        dsd = safetensors.torch.load_file(str(dense))
        csd = safetensors.torch.load_file(str(canonical))
        # the layers Bonsai packs carry a weight_scale in the canonical file: quantize exactly those
        marks = {k: v for k, v in csd.items() if k.endswith(".weight_scale")}
        _save(fp8_scaled_state_dict(dsd, marks), fp8)
        del dsd, csd
    te_bf16 = te_dir / TE_BF16
    if not te_bf16.is_file():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            write_dense_te(TE_CONFIGS["full"], seed, Path(tmp) / "te")
            sd: dict[str, Any] = {}
            for f in sorted((Path(tmp) / "te").glob("*.safetensors")):
                sd.update(safetensors.torch.load_file(str(f)))
            _save({k: v for k, v in sd.items() if not k.startswith("lm_head.")}, te_bf16)
    te_fp8 = te_dir / TE_FP8
    if not te_fp8.is_file():
        sd = safetensors.torch.load_file(str(te_bf16))
        linears = {k[: -len("weight")] + "weight_scale": None for k, v in sd.items() if k.endswith("_proj.weight") and v.ndim == 2}
        _save(fp8_scaled_state_dict(sd, linears), te_fp8)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return names
