"""The FLUX.2 sampling schedule (what ComfyUI's ``Flux2Scheduler`` node and diffusers' FLUX.2
pipeline use), kept here so the sampler does not import it from ComfyUI's ``comfy_extras``.

The shift ``mu`` is an empirical fit of the image's token count and the number of steps
(diffusers ``compute_empirical_mu``): two lines in the token count, measured at 10 and at 200
steps, interpolated linearly in the step count; above 4300 tokens only the 200-step line is used.
Each timestep of ``linspace(1, 0, steps + 1)`` is then shifted as ``e^mu / (e^mu + (1/t - 1))``.
tests/nodes check that these numbers equal the ones ComfyUI's own node produces.
"""

from __future__ import annotations

import math

import torch

from .vae import FLUX2_DOWNSCALE

# (slope, intercept) of mu against the image token count, fitted at 10 and at 200 steps
_FIT_10_STEPS = (8.73809524e-05, 1.89833333)
_FIT_200_STEPS = (0.00016927, 0.45666666)
_LARGE_IMAGE_TOKENS = 4300


def empirical_mu(image_tokens: int, steps: int) -> float:
    """The schedule shift for an image of ``image_tokens`` latent tokens sampled in ``steps`` steps."""
    at_200 = _FIT_200_STEPS[0] * image_tokens + _FIT_200_STEPS[1]
    if image_tokens > _LARGE_IMAGE_TOKENS:
        return float(at_200)
    at_10 = _FIT_10_STEPS[0] * image_tokens + _FIT_10_STEPS[1]
    per_step = (at_200 - at_10) / 190.0
    return float(per_step * steps + (at_200 - 200.0 * per_step))


def flux2_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """The ``steps + 1`` sigmas (1 ... 0) for a ``width`` x ``height`` image."""
    tokens = round(width * height / (FLUX2_DOWNSCALE * FLUX2_DOWNSCALE))
    shift = math.exp(empirical_mu(tokens, steps))
    t = torch.linspace(1, 0, steps + 1)
    return shift / (shift + (1 / t - 1))
