"""API-format prompt builders for the ComfyUI tests (the JSON a client POSTs to /prompt)."""

from __future__ import annotations

from typing import Any

Node = dict[str, Any]


def bonsai_loader(name: str, backend: str = "auto", compute_dtype: str = "default") -> Node:
    return {"class_type": "BonsaiModelLoader", "inputs": {"model_name": name, "backend": backend, "compute_dtype": compute_dtype}}


def unet_loader(name: str) -> Node:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}


def cond(seed: int = 3, tokens: int = 8, batch: int = 1) -> Node:
    return {"class_type": "BonsaiTestConditioning", "inputs": {"seed": seed, "tokens": tokens, "width": 384, "batch": batch}}


def capture(src: list[Any], label: str = "out") -> Node:
    return {"class_type": "BonsaiTestCapture", "inputs": {"value": src, "label": label}}


def recipe(
    model: Node, *, seed: int = 42, width: int = 64, height: int = 64, batch: int = 1, steps: int = 4, reference_seed: int | None = None
) -> dict[str, Node]:
    """Model -> BonsaiSampler (width/height, or a random reference latent through ReferenceLatent)."""
    p: dict[str, Node] = {"1": model, "2": cond()}
    positive: list[Any] = ["2", 0]
    if reference_seed is not None:
        p["5"] = {"class_type": "BonsaiTestLatent", "inputs": {"seed": reference_seed, "width": width, "height": height, "batch": 1}}
        p["6"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["2", 0], "latent": ["5", 0]}}
        positive = ["6", 0]
    p["3"] = {
        "class_type": "BonsaiSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": positive,
            "seed": seed,
            "width": width,
            "height": height,
            "batch_size": batch,
            "steps": steps,
        },
    }
    p["4"] = capture(["3", 0])
    return p


def recipe_from_latent(model: Node, *, seed: int = 42, width: int = 64, height: int = 64, batch: int = 1) -> dict[str, Node]:
    """BonsaiSampler sized by a connected EmptyFlux2LatentImage (its width/height widgets deliberately wrong)."""
    return {
        "1": model,
        "2": cond(),
        "7": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "3": {
            "class_type": "BonsaiSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "seed": seed,
                "width": 1024,
                "height": 1024,
                "batch_size": 7,
                "steps": 4,
                "latent_image": ["7", 0],
            },
        },
        "4": capture(["3", 0]),
    }


def stock_klein(
    model: Node, *, seed: int = 42, width: int = 64, height: int = 64, batch: int = 1, steps: int = 4, reference_seed: int | None = None
) -> dict[str, Node]:
    """The stock FLUX.2 Klein distilled template: CFGGuider(cfg 1, zeroed negative) + Flux2Scheduler + euler + SamplerCustomAdvanced."""
    p: dict[str, Node] = {"1": model, "2": cond()}
    positive: list[Any] = ["2", 0]
    if reference_seed is not None:
        p["5"] = {"class_type": "BonsaiTestLatent", "inputs": {"seed": reference_seed, "width": width, "height": height, "batch": 1}}
        p["6"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["2", 0], "latent": ["5", 0]}}
        positive = ["6", 0]
    p.update(
        {
            "10": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": positive}},
            "11": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": positive, "negative": ["10", 0], "cfg": 1.0}},
            "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "13": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": width, "height": height}},
            "14": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "15": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
            "16": {
                "class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["14", 0], "guider": ["11", 0], "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["15", 0]},
            },
            "4": capture(["16", 0]),
        }
    )
    return p


def ksampler(model: Node, *, seed: int = 42, width: int = 64, height: int = 64, steps: int = 4) -> dict[str, Node]:
    """Stock KSampler (fixed shift) with cfg 1 and a zeroed negative."""
    return {
        "1": model,
        "2": cond(),
        "10": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "15": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["10", 0],
                "latent_image": ["15", 0],
                "denoise": 1.0,
            },
        },
        "4": capture(["3", 0]),
    }
