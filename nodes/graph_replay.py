"""Graph replay from the Bonsai loader: the same ``torch.compile`` wrapper ComfyUI's stock
``TorchCompileModel`` node installs, offered as an input of the loader so a user gets replayed
steps without knowing that node.

``cudagraphs`` records each step's kernel launches once per resolution and replays them: the
per-launch CPU cost that bounds a 512² step disappears, the kernels (and so the result) stay the
eager ones. ``inductor`` also generates fused kernels around the packed products (a small,
bounded difference to eager, see docs/KERNELS.md). The packed product itself is one opaque custom
op that keeps no tensor between calls (:mod:`.lowbit_op`), which is what makes both safe across
resolution changes, LoRA changes and ComfyUI unloading the model.
"""

from __future__ import annotations

from typing import Any

import comfy.model_patcher

from ..bonsai_core.escape import escaping_logger

log = escaping_logger("bonsai_image.graph_replay")

CHOICES = ("off", "cudagraphs", "inductor")


def _skip_transformer_options_guards(guard_entries: list[Any]) -> list[bool]:
    # As the stock node does: per-step transformer_options (sigmas, patches) must not cause recompiles.
    return [("transformer_options" not in entry.name) for entry in guard_entries]


def with_graph_replay(patcher: comfy.model_patcher.ModelPatcher, backend: str) -> comfy.model_patcher.ModelPatcher:
    """``patcher`` itself for ``off``; else a clone whose diffusion model runs through ``torch.compile(backend)``."""
    if backend == "off":
        return patcher
    if backend not in CHOICES:
        raise ValueError(f"graph_replay must be one of {', '.join(CHOICES)}, got {backend!r}")
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    try:  # compiled graphs need a non-dynamic patcher (what TorchCompileModel's clone asks for)
        m = patcher.clone(disable_dynamic=True)
    except TypeError:  # ComfyUI without dynamic VRAM
        m = patcher.clone()
    set_torch_compile_wrapper(model=m, backend=backend, options={"guard_filter_fn": _skip_transformer_options_guards})
    log.info("Bonsai model: steps run through torch.compile(backend=%s) (graph replay)", backend)
    return m
