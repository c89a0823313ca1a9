"""``BonsaiModelLoader``: a Bonsai transformer as a stock ComfyUI ``MODEL``.

The model is ComfyUI's own FLUX.2 (``comfy.sd.load_diffusion_model_state_dict``) built with
:func:`nodes.ops.make_bonsai_ops`, so samplers, schedulers, ReferenceLatent, LoRA key maps and
model management (lowvram, offload, dynamic VRAM) see a stock model whose quantized linears stay
packed.

What the combo lists and how names become paths is :mod:`.model_sources` (canonical files in
``models/bonsai``, legacy ones in ``models/diffusion_models``, released snapshot folders). Every
bad file ends as one ``BonsaiFormatError`` naming the file and the tensor; prompt validation
already refuses files whose header is wrong, so the UI shows a node error, not a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import torch
from comfy_api.latest import io

from ..bonsai_core import dispatch
from ..bonsai_core.canonical import scale_key, zero_key
from ..bonsai_core.checkpoint import BonsaiCheckpoint
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.packing import PackedWeight
from . import folders
from .graph_replay import CHOICES as GRAPH_REPLAY_CHOICES
from .graph_replay import with_graph_replay
from .lora import install_lora_support
from .model_sources import list_models, open_bonsai, resolve_model, source_fingerprint, validation_problem
from .ops import BonsaiOps, bonsai_linears, make_bonsai_ops

log = escaping_logger("bonsai_image.loader")

CATEGORY = "Bonsai Image"  # every node of the pack lives in this one category
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Token counts used to name what "auto" picks in the load log: one text token, and a 1024x1024
# image (64 x 64 latent patches) with the 512 text tokens of the Klein recipe.
_FEW_TOKENS, _IMAGE_TOKENS = 1, 64 * 64 + 512


# ---------------------------------------------------------------------------
# building the ComfyUI model
# ---------------------------------------------------------------------------


def backend_choices() -> list[str]:
    """``auto`` (exact), ``auto-fp8`` (fastest: FP8 tensor cores where the GPU has them, else as
    ``auto``), then the matmul backends ``bonsai_core.dispatch`` knows."""
    return [dispatch.AUTO, dispatch.AUTO_FP8, *dispatch.backend_names()]


def chosen_backend(backend: str, bits: int, dtype: torch.dtype) -> str:
    """The backend that will run the packed matmuls here, for the load log (never just "auto").

    ``auto`` chooses per call from the token count; when few tokens and a 1024x1024 image differ,
    both are named."""
    device = comfy.model_management.get_torch_device()
    try:
        few = dispatch.select_backend(device, dtype, bits, _FEW_TOKENS, backend)
        image = dispatch.select_backend(device, dtype, bits, _IMAGE_TOKENS, backend)
    except Exception as e:  # noqa: BLE001 -- the log line must not be what fails a load
        log.debug("backend selection for the log failed: %s", e)
        return backend
    name = image if few == image else f"{few} (few tokens) / {image} (images)"
    return f"{name}, chosen by {backend} on {device.type}" if backend in (dispatch.AUTO, dispatch.AUTO_FP8) else name


def bfl_state_dict(ckpt: BonsaiCheckpoint) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict ComfyUI loads (BFL keys; packed layers as ``weight`` + ``weight_scale``, affine
    ones also ``weight_zero``) and
    the logical parameter count (what the dense model would have)."""
    sd: dict[str, torch.Tensor] = {}
    params = 0
    for key, value in ckpt.items():
        if isinstance(value, PackedWeight):
            sd[key] = value.codes
            sd[scale_key(key)] = value.scales
            if value.zeros is not None:  # affine layer: W = q * scale + zero per group
                sd[zero_key(key)] = value.zeros
            params += value.out_features * value.in_features
        else:
            sd[key] = value
            params += value.numel()
    return sd, params


def _resolve_dtype(name: str, params: int) -> torch.dtype:
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {list(COMPUTE_DTYPES)}")
    chosen = COMPUTE_DTYPES[name]
    if chosen is not None:
        return chosen
    # What stock UNETLoader picks for the dequantized bf16 file of the same model.
    supported = [torch.bfloat16, torch.float16, torch.float32]
    return comfy.model_management.unet_dtype(model_params=params, supported_dtypes=supported, weight_dtype=torch.bfloat16)


def _check_backend(path: Path, backend: str, bits: int, dtype: torch.dtype) -> None:
    """Refuse a backend that cannot run here at load time, with the backend's own reason."""
    if backend in (dispatch.AUTO, dispatch.AUTO_FP8):
        return
    device = comfy.model_management.get_torch_device()
    try:
        reason = dispatch.unavailable_reason(backend, device, dtype, bits)
    except ValueError as e:  # unknown backend name
        raise BonsaiFormatError(path, None, f"{e}") from None
    if reason is not None:
        raise BonsaiFormatError(
            path, None, f"backend '{backend}' cannot run on {device} with {dtype}: {reason}. Pick 'auto' or another backend"
        ) from None


def load_bonsai_model(
    path: str | os.PathLike[str], backend: str = "auto", compute_dtype: str = "default", disable_dynamic: bool = False
) -> comfy.model_patcher.ModelPatcher:
    """Load a canonical file or snapshot folder as a stock ComfyUI ``ModelPatcher``.

    Also the patcher's ``cached_patcher_init`` factory: ComfyUI calls it again (with
    ``disable_dynamic=True``) when it needs an independent non-dynamic copy or a multi-GPU clone.
    """
    path = Path(path)
    ckpt = open_bonsai(path)
    bits = ckpt.meta.bits
    sd, params = bfl_state_dict(ckpt)
    dtype = _resolve_dtype(compute_dtype, params)
    _check_backend(path, backend, bits, dtype)
    ops = make_bonsai_ops(backend, bits)
    try:
        # disable_dynamic only exists in ComfyUI versions with dynamic VRAM; pass it only when asked.
        extra = {"disable_dynamic": True} if disable_dynamic else {}
        patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops, "dtype": dtype}, **extra)
    except RuntimeError as e:  # torch's load_state_dict collects per-layer messages from BonsaiOps
        raise BonsaiFormatError(path, None, f"ComfyUI could not load the weights: {e}") from None
    if patcher is None:
        raise BonsaiFormatError(
            path, None, "ComfyUI did not recognise the tensors as a FLUX.2 transformer (img_in/txt_in/double_stream_modulation_img)"
        )
    _check_loaded(path, patcher, len(ckpt.packed_shapes))
    install_lora_support(patcher)  # stock LoraLoader patches become unmerged branches (nodes/lora.py); clones inherit it
    patcher.cached_patcher_init = (load_bonsai_model, (str(path), backend, compute_dtype))
    log.info(
        "Bonsai %s model loaded from %s: %d packed linears, %.1f MB resident, compute %s, backend %s",
        ckpt.meta.variant,
        path.name,
        len(ckpt.packed_shapes),
        patcher.model_size() / 2**20,
        dtype,
        chosen_backend(backend, bits, dtype),
    )
    return patcher


def _check_loaded(path: Path, patcher: comfy.model_patcher.ModelPatcher, expected_packed: int) -> None:
    packed = 0
    for name, layer in bonsai_linears(patcher.model.diffusion_model):
        if layer.is_packed:
            packed += 1
        elif layer.weight is None:
            raise BonsaiFormatError(path, f"{name}.weight", "tensor is missing (the model ComfyUI built expects it)")
    if packed != expected_packed:
        raise BonsaiFormatError(
            path, None, f"{expected_packed} packed layers in the file, {packed} in the model ComfyUI built (unexpected geometry)"
        )


# ---------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------


class BonsaiModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiModelLoader",
            display_name="Bonsai Load Model",
            category=CATEGORY,
            description="Loads Bonsai Image 4B (binary or ternary FLUX.2 Klein 4B) with packed weights as a stock MODEL.",
            search_aliases=["bonsai", "flux2 klein binary", "ternary", "unet loader", "load diffusion model"],
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folders.cached_listing("models", (folders.BONSAI, "diffusion_models"), list_models, []),
                    tooltip=(
                        "A released snapshot folder in models/bonsai (ends with /), a canonical .safetensors or a Bonsai .gguf in models/bonsai. "
                        f"Empty? {folders.models_hint()}."
                    ),
                ),
                io.Combo.Input(
                    "backend",
                    options=backend_choices(),
                    default="auto",
                    tooltip="Low-bit matmul kernel; auto picks the fastest that runs here (the load log names it).",
                ),
                io.Combo.Input(
                    "compute_dtype",
                    options=list(COMPUTE_DTYPES),
                    default="default",
                    tooltip="Activation dtype; default is what ComfyUI picks for this device.",
                ),
                io.Combo.Input(
                    "graph_replay",
                    options=list(GRAPH_REPLAY_CHOICES),
                    default="off",
                    optional=True,
                    tooltip=(
                        "cudagraphs: record each step's kernels once per resolution and replay them (same result, less CPU "
                        "per step; fastest at 512²). inductor: torch.compile with generated kernels. Same as the stock "
                        "TorchCompileModel node after this loader; the first prompt at each size pays the recording/compile."
                    ),
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, model_name: str | None) -> bool | str:
        # Taking model_name here replaces ComfyUI's "value not in list" check with one precise line: the
        # name is refused, missing (and how to get it), or exists but does not open (a dense model, a truncated download).
        if model_name is None:
            return True  # linked: ComfyUI passes None at queue time; execute resolves and guards the real value
        problem = validation_problem(model_name)
        return True if problem is None else problem

    @classmethod
    def fingerprint_inputs(cls, model_name: str, backend: str, compute_dtype: str, graph_replay: str = "off") -> Any:
        # A re-converted file under the same name must reload.
        try:
            fp = source_fingerprint(resolve_model(model_name))
        except (ValueError, OSError):
            return None  # execute raises the precise error
        return (model_name, fp, backend, compute_dtype, graph_replay)

    @classmethod
    def execute(cls, model_name: str, backend: str, compute_dtype: str, graph_replay: str = "off") -> io.NodeOutput:
        # Resolved (and guarded) here too: a name arriving through a link never reached validate_inputs.
        patcher = load_bonsai_model(resolve_model(model_name), backend, compute_dtype)
        return io.NodeOutput(with_graph_replay(patcher, graph_replay))


NODES: list[type[io.ComfyNode]] = [BonsaiModelLoader]

__all__ = [
    "NODES",
    "BonsaiModelLoader",
    "BonsaiOps",
    "bfl_state_dict",
    "list_models",
    "load_bonsai_model",
    "open_bonsai",
    "resolve_model",
]

folders.prewarm_listing("models", (folders.BONSAI, "diffusion_models"), list_models)
