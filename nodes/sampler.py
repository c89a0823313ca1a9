"""``BonsaiSampler``: the released sampling recipe as one node.

Bonsai Image 4B is distilled FLUX.2 Klein: Euler flow matching, 4 steps, the resolution-dependent
shift of ``Flux2Scheduler`` (diffusers ``compute_empirical_mu``), cfg 1 with a zeroed negative
(so one model call per step). This node is exactly the stock graph

    EmptyFlux2LatentImage -> RandomNoise(seed) + CFGGuider(model, positive, ConditioningZeroOut(positive), cfg=1)
    + KSamplerSelect("euler") + Flux2Scheduler(steps, width, height) -> SamplerCustomAdvanced

built from ComfyUI's own pieces (``comfy.samplers.CFGGuider``, ``comfy.sample.prepare_noise``,
``latent_preview``; previews and empty-latent resizing are optional, :mod:`.comfy_features`), so progress bar, previews, interrupt and model management behave as in the
stock graph, and the latents are the same. The ``Flux2Scheduler`` schedule is
:mod:`bonsai_core.flux2_schedule` (a few lines of arithmetic, checked against ComfyUI's node in the
tests) rather than an import from ``comfy_extras``, whose helpers are not a stable API.
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

import nodes as comfy_nodes

from ..bonsai_core.flux2_schedule import flux2_sigmas
from ..bonsai_core.vae import FLUX2_DOWNSCALE, FLUX2_LATENT_CHANNELS
from . import comfy_features

RECIPE_STEPS = 4
RECIPE_SAMPLER = "euler"
RECIPE_CFG = 1.0


def zeroed(conditioning: list[Any]) -> list[Any]:
    """``ConditioningZeroOut``: the negative the distilled recipe uses (ignored at cfg 1)."""
    return comfy_nodes.ConditioningZeroOut().zero_out(conditioning)[0]


def sample_recipe(
    model: Any,
    positive: list[Any],
    seed: int,
    latent: dict[str, Any],
    steps: int = RECIPE_STEPS,
) -> dict[str, Any]:
    """Run the recipe on ``latent`` (a LATENT dict) and return the sampled LATENT dict."""
    samples = latent["samples"]
    fix_channels = comfy_features.optional("comfy.sample", "fix_empty_latent_channels", "resizing an empty latent of another model")
    if fix_channels is not None:
        samples = fix_channels(model, samples, latent.get("downscale_ratio_spacial"), latent.get("downscale_ratio_temporal"))
    height, width = samples.shape[-2] * FLUX2_DOWNSCALE, samples.shape[-1] * FLUX2_DOWNSCALE
    sigmas = flux2_sigmas(steps, width, height)

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, zeroed(positive))
    guider.set_cfg(RECIPE_CFG)
    sampler = comfy.samplers.sampler_object(RECIPE_SAMPLER)
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))

    x0_output: dict[str, Any] = {}
    previews = comfy_features.optional("latent_preview", "prepare_callback", "sampling previews")
    callback = previews(model, sigmas.shape[-1] - 1, x0_output) if previews is not None else None
    out_samples = guider.sample(
        noise,
        samples,
        sampler,
        sigmas,
        denoise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    out = latent.copy()
    out.pop("downscale_ratio_spacial", None)
    out.pop("downscale_ratio_temporal", None)
    out["samples"] = out_samples.to(comfy.model_management.intermediate_device())
    return out


def empty_latent(width: int, height: int, batch_size: int) -> dict[str, Any]:
    """``EmptyFlux2LatentImage``."""
    z = torch.zeros(
        [batch_size, FLUX2_LATENT_CHANNELS, height // FLUX2_DOWNSCALE, width // FLUX2_DOWNSCALE],
        device=comfy.model_management.intermediate_device(),
    )
    return {"samples": z}


class BonsaiSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiSampler",
            display_name="Bonsai Sampler",
            category="Bonsai Image",
            description=(
                "The released Bonsai/FLUX.2 Klein distilled recipe: Euler, 4 steps, Flux2Scheduler shift for the image size, "
                "cfg 1 with a zeroed negative. Connect a latent (e.g. for image edits sized from the input) or set width/height."
            ),
            search_aliases=["bonsai", "klein sampler", "flux2 4 step"],
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("width", default=1024, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16),
                io.Int.Input("height", default=1024, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16),
                io.Int.Input("batch_size", default=1, min=1, max=4096),
                io.Int.Input("steps", default=RECIPE_STEPS, min=1, max=100, tooltip="The release is distilled for 4 steps.", advanced=True),
                io.Latent.Input(
                    "latent_image", optional=True, tooltip="When connected, its size and batch replace width/height/batch_size."
                ),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        positive: list[Any],
        seed: int,
        width: int,
        height: int,
        batch_size: int,
        steps: int = RECIPE_STEPS,
        latent_image: dict[str, Any] | None = None,
    ) -> io.NodeOutput:
        latent = latent_image if latent_image is not None else empty_latent(width, height, batch_size)
        return io.NodeOutput(sample_recipe(model, positive, seed, latent, steps))


NODES: list[type[io.ComfyNode]] = [BonsaiSampler]
