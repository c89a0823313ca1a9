"""Synthetic released snapshot folders: what ``huggingface_hub.snapshot_download`` leaves on disk.

A Bonsai release folder (formats.md §1) holds the packed transformer, the 4-bit text encoder and
the FLUX.2 VAE side by side::

    bonsai-image-ternary-4B-gemlite-2bit/          bonsai-image-binary-4B-mlx-1bit/
      model_index.json                               model_index.json
      manifest.json                                  manifest.json
      transformer-gemlite-int2/                      scheduler/scheduler_config.json
        state_dict.pt, config.json,                  tokenizer/...
        quantization_config.json                     transformer-packed-mflux/
      text_encoder-hqq-4bit/                           diffusion_pytorch_model.safetensors, ...
        config.json, qmodel.pt, tokenizer/...        text_encoder-mlx-4bit/
      vae/                                             config.json, model.safetensors, tokenizer files
        config.json,                                 vae/
        diffusion_pytorch_model.safetensors            config.json, diffusion_pytorch_model.safetensors

The pieces come from their owners' fixture writers (transformer: :mod:`bonsai_core.fixtures`,
text encoder: :mod:`bonsai_core.te_fixture`, VAE: :mod:`bonsai_core.vae_fixture`), so a snapshot
fixture exercises exactly the readers a real download does. ``size="tiny"`` pairs ``KLEIN_TINY``
(context 384) with the tiny Qwen3 TE (hidden 128, 3 x 128 = 384).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .packing import VARIANT_BITS

SNAPSHOT_LAYOUTS = ("gemlite", "mlx", "unpacked")
_TE_FORMAT = {"gemlite": "hqq", "mlx": "mlx"}
_TE_FOLDER = {"gemlite": "text_encoder-hqq-4bit", "mlx": "text_encoder-mlx-4bit", "unpacked": "text_encoder"}
_TRANSFORMER_FOLDER = {"gemlite": "transformer-gemlite-int{bits}", "mlx": "transformer-packed-mflux", "unpacked": "transformer"}
DENSE_TE_SHARDS = 2  # the unpacked releases ship the bf16 Qwen3 as index + shards, as transformers saves it


def snapshot_repo_name(variant: str, layout: str) -> str:
    """The Hugging Face repo (and local folder) name of a release, e.g. ``bonsai-image-ternary-4B-gemlite-2bit``."""
    if variant not in VARIANT_BITS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_BITS)}")
    if layout not in SNAPSHOT_LAYOUTS:
        raise ValueError(f"unknown snapshot layout {layout!r}; expected one of {SNAPSHOT_LAYOUTS}")
    if layout == "unpacked":
        return f"bonsai-image-{variant}-4B-unpacked"
    return f"bonsai-image-{variant}-4B-{layout}-{VARIANT_BITS[variant]}bit"


def _model_index(layout: str, variant: str) -> dict[str, Any]:
    # diffusers' Flux2KleinPipeline declaration, with the release's component folder names.
    return {
        "_class_name": "Flux2KleinPipeline",
        "is_distilled": True,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }


_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def write_dense_te(config: dict[str, Any], seed: int, out_dir: Path) -> Path:
    """A random bf16 ``Qwen3ForCausalLM`` folder as ``save_pretrained`` writes it (tied embeddings: no ``lm_head``):
    ``config.json`` + ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    import torch

    from .safetensors_io import TensorSpec, write_safetensors
    from .te_formats import expected_dense_shapes, expected_linear_shapes

    shapes = {**expected_dense_shapes(config), **expected_linear_shapes(config)}
    gen = torch.Generator().manual_seed(seed)

    def produce(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 1:  # RMSNorm gains
            return (1 + 0.05 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        return (torch.randn(shape, generator=gen) / shape[1] ** 0.5).to(torch.bfloat16)

    names = sorted(shapes)
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    per = -(-len(names) // DENSE_TE_SHARDS)
    for i in range(DENSE_TE_SHARDS):
        fname = f"model-{i + 1:05d}-of-{DENSE_TE_SHARDS:05d}.safetensors"
        part = names[i * per : (i + 1) * per]
        specs = [TensorSpec(n, torch.bfloat16, shapes[n], lambda n=n: produce(n, shapes[n])) for n in part]
        write_safetensors(out_dir / fname, specs, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
        total += sum(2 * _numel(shapes[n]) for n in part)
    _write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(out_dir / "config.json", {**config, "architectures": ["Qwen3ForCausalLM"]})
    return out_dir


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """A Qwen tokenizer folder as Qwen3 releases ship it: the chat template in ``chat_template.jinja``
    (the same Klein-branch template the text-encoder fixtures use), not in ``tokenizer_config.json``."""
    from .te_fixture import FIXTURE_CHAT_TEMPLATE

    shutil.copytree(src, dst)
    cfg = dst / "tokenizer_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        data.pop("chat_template", None)
        _write_json(cfg, data)
    (dst / "chat_template.jinja").write_text(FIXTURE_CHAT_TEMPLATE, encoding="utf-8")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_snapshot_fixture(
    variant: str,
    layout: str,
    out_root: str | os.PathLike[str],
    *,
    size: str = "tiny",
    seed: int = 0,
    tokenizer_src: str | os.PathLike[str] | None = None,
    vae_size: str | None = None,
) -> Path:
    """Write ``out_root/<repo-name>/`` as a complete release of ``variant`` in ``layout`` (gemlite, mlx, unpacked).

    The unpacked releases are plain diffusers ``Flux2KleinPipeline`` folders: bf16 transformer, bf16
    Qwen3 text encoder (``text_encoder/``, sharded), ``tokenizer/``, ``vae/``, ``scheduler/``.

    ``size`` is the transformer and text-encoder geometry (``tiny`` or ``full``); ``vae_size`` the
    VAE's (default: ``tiny`` with a tiny model, ``full`` otherwise). ``tokenizer_src``: a Qwen
    tokenizer folder shipped beside the text encoder, as the releases do (e.g. ComfyUI's
    ``comfy/text_encoders/qwen25_tokenizer``). The folder is built beside its target and renamed
    into place, so a failed build leaves nothing behind. Returns the snapshot folder.
    """
    from .fixtures import make_fixture
    from .te_fixture import TE_CONFIGS, make_te_fixture
    from .vae_fixture import make_vae_fixture

    name = snapshot_repo_name(variant, layout)
    target = Path(out_root) / name
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        pack = make_fixture(variant, size, layout, seed, tmp)
        expected = _TRANSFORMER_FOLDER[layout].format(bits=VARIANT_BITS[variant])
        if pack.name != expected:
            raise RuntimeError(f"the transformer fixture wrote {pack.name!r}, a {layout} release names it {expected!r}")
        if layout == "unpacked":
            write_dense_te(TE_CONFIGS[size], seed, tmp / _TE_FOLDER[layout])
        else:
            make_te_fixture(_TE_FORMAT[layout], size, seed, tmp / _TE_FOLDER[layout], tokenizer_src=tokenizer_src)
        make_vae_fixture(vae_size or ("tiny" if size == "tiny" else "full"), seed, tmp / "vae")
        _write_json(tmp / "model_index.json", _model_index(layout, variant))
        _write_json(
            tmp / "manifest.json", {"model_version": f"{variant} g128 (synthetic fixture, seed {seed})", "repo": f"prism-ml/{name}"}
        )
        if layout in ("mlx", "unpacked"):
            # These releases also carry the diffusers scheduler and a top-level tokenizer.
            _write_json(tmp / "scheduler" / "scheduler_config.json", _SCHEDULER_CONFIG)
            if tokenizer_src is not None:
                _copy_tokenizer(Path(tokenizer_src), tmp / "tokenizer")
    return target
