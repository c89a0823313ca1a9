"""Synthetic FLUX.2 Klein LoRAs (tests, example workflows, the LoRA benchmark).

A LoRA here is what trainers save: ``<module>.lora_A.weight`` ``[rank, in]`` (down) and
``<module>.lora_B.weight`` ``[out, rank]`` (up), bf16, plus ``<module>.alpha``, for every packed
(quantized) linear of the given geometry, under BFL module names with ComfyUI's
``diffusion_model.`` prefix (the form ComfyUI's LoRA key mapping accepts for FLUX.2).
Values are deterministic per (seed, module) and large enough to visibly change a sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bonsai_core.klein import KleinConfig, bfl_quantized_layers, diffusers_quantized_linears
from bonsai_core.safetensors_io import TensorSpec, write_safetensors

from .seeded import klein_config, tensor_generator

_NAMESPACE = "bonsai-lora-fixture"


def lora_targets(cfg: KleinConfig) -> dict[str, tuple[int, int]]:
    """``diffusion_model.<BFL module>`` -> (out, in) for every packed linear."""
    ql = diffusers_quantized_linears(cfg)
    return {
        "diffusion_model." + key[: -len(".weight")]: (sum(ql[m][0] for m in mods), ql[mods[0]][1])
        for key, mods in bfl_quantized_layers(cfg).items()
    }


def lora_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One deterministic LoRA factor: N(0, 1/fan_in) so ``up @ down`` has entries ~ 1/sqrt(in)."""
    g = tensor_generator(_NAMESPACE, seed, name)
    return (torch.randn(shape, generator=g) / shape[-1] ** 0.5).to(torch.bfloat16)


def lora_specs(cfg: KleinConfig, rank: int, seed: int = 0, alpha: float | None = None) -> list[TensorSpec]:
    """Streaming specs (one tensor produced at a time) of a rank-``rank`` LoRA on every packed linear."""
    specs: list[TensorSpec] = []
    a = float(rank if alpha is None else alpha)
    for module, (n, k) in lora_targets(cfg).items():
        for suffix, shape in ((".lora_A.weight", (rank, k)), (".lora_B.weight", (n, rank))):
            name = module + suffix
            specs.append(TensorSpec(name, torch.bfloat16, shape, lambda name=name, shape=shape: lora_tensor(name, shape, seed)))
        specs.append(TensorSpec(module + ".alpha", torch.float32, (), lambda a=a: torch.tensor(a)))
    return specs


def make_lora_fixture(out: str | os.PathLike[str], size: str | KleinConfig = "tiny", rank: int = 4, seed: int = 0) -> Path:
    """Write a synthetic LoRA for the given geometry (``"tiny"``, ``"full"`` or a KleinConfig); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, lora_specs(klein_config(size), rank, seed), {"bonsai_fixture": "lora", "rank": str(rank), "seed": str(seed)})
    return path
