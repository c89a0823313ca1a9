"""One generator of synthetic Bonsai releases, for tests, benchmarks and demos.

Every piece of a release can be written alone or as a whole snapshot, deterministically per seed:

* transformer in every layout the runtime writes: :func:`make_fixture` / :func:`synthetic_checkpoint`
  (:mod:`.transformer`);
* text encoder, 4-bit HQQ / MLX or bf16: :func:`make_te_fixture`, :func:`write_dense_te` (:mod:`.text_encoder`);
* FLUX.2 VAE: :func:`make_vae_fixture` (:mod:`.vae`);
* LoRA for the packed linears: :func:`make_lora_fixture` (:mod:`.lora`);
* a whole release snapshot (transformer + text encoder + VAE + pipeline files): :func:`make_release`,
  :func:`make_snapshot_fixture` (:mod:`.release`).

Formats, geometry and names are the runtime's (``bonsai_core``); nothing here re-declares them.
CLI: ``python -m bonsai_tools make-fixture`` (:mod:`.cli`).
"""

from __future__ import annotations

from .lora import lora_specs, make_lora_fixture
from .release import SNAPSHOT_LAYOUTS, make_release, make_snapshot_fixture, snapshot_repo_name
from .seeded import SIZES
from .text_encoder import QWEN3_4B_CONFIG, QWEN3_TINY_CONFIG, TE_CONFIGS, make_te_fixture, random_te, write_dense_te, write_hqq, write_mlx
from .transformer import make_fixture, synthetic_checkpoint
from .vae import make_vae_fixture, vae_fixture_config

__all__ = [
    "QWEN3_4B_CONFIG",
    "QWEN3_TINY_CONFIG",
    "SIZES",
    "SNAPSHOT_LAYOUTS",
    "TE_CONFIGS",
    "lora_specs",
    "make_fixture",
    "make_lora_fixture",
    "make_release",
    "make_snapshot_fixture",
    "make_te_fixture",
    "make_vae_fixture",
    "random_te",
    "snapshot_repo_name",
    "synthetic_checkpoint",
    "vae_fixture_config",
    "write_dense_te",
    "write_hqq",
    "write_mlx",
]
