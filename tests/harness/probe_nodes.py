"""Test-only nodes added to ComfyUI's node mappings: capture any value, seeded conditioning and latents.

They let a test feed a tiny model without a text encoder and compare the tensors a graph produced."""

from __future__ import annotations

from typing import Any


def make_capture_node(store: dict[str, Any]) -> type:
    """An output node class that keeps its input under ``label`` in ``store``."""

    class BonsaiTestCapture:
        """Test-only output node: keeps its input under ``label`` in the session's ``captured``."""

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"value": ("*", {}), "label": ("STRING", {"default": "out"})}}

        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        def capture(self, value: Any, label: str) -> dict[str, Any]:
            store[label] = value
            return {}

    return BonsaiTestCapture


class TestConditioning:
    """Test-only source of FLUX.2 conditioning for tiny models (no text encoder needed):
    ``[[randn(batch, tokens, width), {"pooled_output": None}]]`` from a seed."""

    __test__ = False  # a ComfyUI node, not a pytest test class

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                "width": ("INT", {"default": 384, "min": 1, "max": 16384}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed: int, tokens: int, width: int, batch: int) -> tuple[list[Any]]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(batch, tokens, width, generator=g), {"pooled_output": None}]],)


class TestLatent:
    """Test-only random FLUX.2 latent ``{"samples": randn(batch, 128, height/16, width/16)}`` (e.g. a reference image)."""

    __test__ = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "width": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 16}),
                "height": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 16}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed: int, width: int, height: int, batch: int) -> tuple[dict[str, Any]]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return ({"samples": torch.randn(batch, 128, height // 16, width // 16, generator=g)},)


def register(node_class_mappings: dict[str, Any], captured: dict[str, Any]) -> None:
    """Add the test nodes to ComfyUI's ``nodes.NODE_CLASS_MAPPINGS``; captures land in ``captured``."""
    node_class_mappings["BonsaiTestCapture"] = make_capture_node(captured)
    node_class_mappings["BonsaiTestConditioning"] = TestConditioning
    node_class_mappings["BonsaiTestLatent"] = TestLatent
