"""LoRA on Bonsai layers with ComfyUI's stock LoraLoader, as unmerged low-rank branches.

Stock ComfyUI merges a LoRA into the weight (``W' = W + s * up @ down``) and writes it back; on
binary/ternary codes that write-back would re-quantize and destroy the LoRA. Bonsai layers keep
their packed codes untouched instead: ``BonsaiOps.Linear.forward`` computes ``Wq x`` and then adds
``apply_low_rank(x, y, self.bonsai_lora)``. This module fills ``bonsai_lora`` from the patches
ComfyUI collected on the ModelPatcher (``patcher.patches["<layer>.weight"]``).

Why a ModelPatcher callback: ``LoraLoader`` only clones the patcher and calls ``add_patches``;
ComfyUI applies patches when it *loads* a patcher (``ModelPatcher.load`` /
``ModelPatcherDynamic.load``), and it re-loads whenever the active patcher's ``patches_uuid``
differs from what is on the model (another LoRA, another strength, LoRA removed). Both ``load``
implementations end with the ``CallbacksMP.ON_LOAD`` callbacks, and ``clone()`` copies callbacks,
so one callback installed on the loader's patcher follows every clone LoraLoader makes.
Bonsai layers hold buffers, not parameters, so ComfyUI's own merge loop (over named parameters)
never touches them; dense edge layers (img_in, modulation, final layer) keep stock merging.

Memory management paths (ComfyUI v0.29.0, ``comfy/model_patcher.py``):
* full load and lowvram ``load()``: ON_LOAD runs at the end and builds/clears the branches on
  ``device_to``. Offloaded layers also get ``LowVramPatch`` entries in ``weight_function`` (also
  appended later by ``partially_unload``, which runs no callback): :func:`resolve_lowvram_patch`
  tells ``BonsaiOps`` they are already covered by ``bonsai_lora``.
* ``ModelPatcherDynamic`` (dynamic VRAM, CUDA only: on CPU it reroutes to ``ModelPatcher``):
  ``get_key_weight`` finds the packed view (nodes/packed_weight.py) whose shape LoRA does not
  change, so it attaches a ``weight_lowvram_function`` that the packed forward never calls (the
  branches cover it) and sizes the layer by its packed bytes; codes/scales are buffers and move with
  ``set_attr_buffer``; its ``load()`` ends with the same ON_LOAD callback (every ``partially_load``
  calls ``load()``, the stamp below makes repeats free).
* switching clones: ``load_models_gpu`` detaches the previous clone with ``unpatch_all=False`` and
  skips ``load()`` when the new clone has the same ``patches_uuid`` (branches kept), otherwise it
  unpatches and loads again (branches rebuilt). ``detach(unpatch_all=True)`` clears them.

Supported patch kinds (all exact, no dense copy of a base layer; memory follows the adapter's own
parameters and the layer's shape, never a product of ranks):
* LoRA / LoCon (``lora_up/down``, ``lora_A/B``, diffusers ``.lora.up``...; 1x1 ``lora_mid`` folded
  into ``down``): a branch of the LoRA's own rank.
* LoHa and LoKr: exact branches of rank r1*r2 (Khatri-Rao factors of a Hadamard product, Kronecker
  factors of a Kronecker product) when those factors hold no more numbers than the slice's dense delta,
  otherwise the exact dense delta of the addressed slice (one dense slice per patch, logged as a warning).
  Factor shapes are checked before anything is multiplied.
* full ``diff`` patches: the dense delta (the file's own tensor).
* ``strength_model`` != 1 (model merging / attention multiply nodes): scales the slice's output.
Refused with :class:`BonsaiLoraError` (ComfyUI would merge them; that needs the dense weight):
DoRA (``dora_scale``), Tucker factors (convolution-only), GLoRA, OFT, BOFT, ``set`` / ``model_as_lora`` / whole-model patches and
patches with a ``function``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.lowrank import LowRankBranch
from . import comfy_features
from .lora_factors import BonsaiLoraError, ShapeMismatch, loha_factors, lokr_factors, lora_factors
from .ops import register_patch_resolver

log = escaping_logger(__name__)

CALLBACK_KEY = "bonsai_lora"
# attribute on a Bonsai layer remembering which (patches_uuid, device, dtype) its branches were built for
_STAMP_ATTR = "bonsai_lora_stamp"


# ---------------------------------------------------------------------------
# patch -> branch translation (pure functions on ComfyUI's patch tuples)
# ---------------------------------------------------------------------------


def _identity(a: torch.Tensor) -> torch.Tensor:
    return a


def _slice_of(key: str, offset: Any, out_features: int, in_features: int) -> tuple[int, int, int, int]:
    """ComfyUI ``offset=(dim, start, length)`` -> (out_start, out_len, in_start, in_len)."""
    if offset is None:
        return 0, out_features, 0, in_features
    dim, start, length = (int(v) for v in offset)
    if dim == 0:
        if start < 0 or start + length > out_features:
            raise BonsaiLoraError(key, f"output slice {start}:{start + length} is outside the layer's {out_features} outputs")
        return start, length, 0, in_features
    if dim == 1:
        if start < 0 or start + length > in_features:
            raise BonsaiLoraError(key, f"input slice {start}:{start + length} is outside the layer's {in_features} inputs")
        return 0, out_features, start, length
    raise BonsaiLoraError(key, f"unsupported patch offset {offset!r} (only dim 0 or 1 of a 2-D weight)")


def _widen_input(down: torch.Tensor, in_start: int, in_len: int, in_features: int) -> torch.Tensor:
    """A branch that reads only inputs ``in_start:in_start+in_len`` as a full-width ``down`` (zero elsewhere)."""
    if in_start == 0 and in_len == in_features:
        return down
    full = down.new_zeros(down.shape[0], in_features)
    full[:, in_start : in_start + in_len] = down
    return full


def _dense_branch(delta: torch.Tensor, scale: float, offset: int, pre_scale: float) -> LowRankBranch:
    """Exact branch for a dense delta ``[n, k]``: the identity goes on the smaller side."""
    n, k = delta.shape
    if n <= k:
        return LowRankBranch(delta, torch.eye(n, dtype=delta.dtype), scale, offset, pre_scale)
    return LowRankBranch(torch.eye(k, dtype=delta.dtype), delta, scale, offset, pre_scale)


def branches_from_patches(key: str, patches: Sequence[tuple], out_features: int, in_features: int) -> list[LowRankBranch]:
    """Translate ComfyUI's patch list for ``<layer>.weight`` into branches, in ComfyUI's order.

    Each patch is ``(strength_patch, adapter, strength_model, offset, function)`` as stored by
    ``ModelPatcher.add_patches``; the result reproduces ``comfy.lora.calculate_weight`` applied to the
    layer, as ``W x`` followed by the branches. Branch tensors stay on the LoRA's device and dtype.
    """
    import comfy.weight_adapter as wa  # ComfyUI is only importable inside ComfyUI (and its tests)

    out: list[LowRankBranch] = []
    dense_bytes = 0
    for strength, v, strength_model, offset, function in patches:
        if function is not None:
            raise BonsaiLoraError(key, "the patch carries a weight function, which only works on a merged weight")
        o_start, n, i_start, k = _slice_of(key, offset, out_features, in_features)
        pre = float(strength_model)
        strength = float(strength)
        try:
            if isinstance(v, wa.LoRAAdapter):
                up, down, factor = lora_factors(key, v.weights, n, k)
                out.append(LowRankBranch(_widen_input(down, i_start, k, in_features), up, strength * factor, o_start, pre))
            elif isinstance(v, (wa.LoHaAdapter, wa.LoKrAdapter)):
                make = loha_factors if isinstance(v, wa.LoHaAdapter) else lokr_factors
                if (f := make(key, v.weights, n, k)) is not None:
                    up, down, factor = f
                    out.append(LowRankBranch(_widen_input(down, i_start, k, in_features), up, strength * factor, o_start, pre))
                    continue
                # the adapter's own merge onto a zero weight is exactly its delta (alpha included)
                # (on a shape mismatch ComfyUI logs the error itself and returns the zeros unchanged)
                delta = v.calculate_weight(torch.zeros(n, k), key, 1.0, 1.0, None, _identity, torch.float32)
                if not delta.any():
                    raise ShapeMismatch(f"{v.name} gives no delta for a {n}x{k} slice")
                dense_bytes += delta.numel() * delta.element_size()
                out.append(_dense_branch(_widen_input(delta, i_start, k, in_features), strength, o_start, pre))
            elif isinstance(v, wa.WeightAdapterBase):
                raise BonsaiLoraError(key, f"{type(v).__name__} patches transform the base weight and cannot be unmerged")
            elif isinstance(v, list):
                raise BonsaiLoraError(key, "whole-model weight patches (model merging) need the dense base weight")
            else:
                kind, data = ("diff", v) if len(v) == 1 else (v[0], v[1])
                if kind != "diff":
                    raise BonsaiLoraError(key, f"{kind!r} patches replace the weight and cannot be unmerged")
                diff = data[0]
                if len(data) > 1 and data[1].get("pad_weight"):
                    raise BonsaiLoraError(key, "padding diff patches would resize the layer")
                if diff is None or strength == 0.0:  # ComfyUI skips the add; only strength_model acts
                    out.append(LowRankBranch(torch.zeros(0, in_features), torch.zeros(n, 0), 0.0, o_start, pre))
                    continue
                if tuple(diff.shape) != (n, k):
                    raise ShapeMismatch(f"diff {list(diff.shape)} != slice {[n, k]}")
                dense_bytes += diff.numel() * diff.element_size()
                out.append(_dense_branch(_widen_input(diff, i_start, k, in_features), strength, o_start, pre))
        except ShapeMismatch as e:
            log.error("Bonsai LoRA: patch on %s not applied: %s", key, e)
            if pre != 1.0:  # ComfyUI scales the weight before trying the add
                out.append(LowRankBranch(torch.zeros(0, in_features), torch.zeros(n, 0), 0.0, o_start, pre))
    if dense_bytes:
        log.warning(
            "Bonsai LoRA: %s uses %.1f MiB of dense delta (diff patches; LoHa/LoKr whose factors would be larger)",
            key,
            dense_bytes / 2**20,
        )
    return out


# ---------------------------------------------------------------------------
# ModelPatcher integration
# ---------------------------------------------------------------------------


def bonsai_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``<layer>.weight`` patch key -> module, for every Bonsai packed layer (modules with ``bonsai_lora``)."""
    return {f"{name}.weight": m for name, m in model.named_modules() if hasattr(m, "bonsai_lora")}


def layer_shape(module: torch.nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a packed layer."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return int(module.out_features), int(module.in_features)
    codes = module.codes
    return int(codes.shape[0]), int(codes.shape[1]) * 8 // int(module.bits)


def _branch_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype activations reach Bonsai layers in, so ``apply_low_rank`` never re-casts per call."""
    dtype = getattr(model, "manual_cast_dtype", None)
    if dtype is None and hasattr(model, "get_dtype"):
        dtype = model.get_dtype()
    if dtype is None or not dtype.is_floating_point:
        dtype = torch.float32
    return dtype


def lora_nbytes(model: torch.nn.Module) -> int:
    """Bytes held by the branches currently attached to the model's Bonsai layers."""
    total = 0
    for m in bonsai_layers(model).values():
        for b in m.bonsai_lora:
            total += b.down.numel() * b.down.element_size() + b.up.numel() * b.up.element_size()
    return total


def sync_lora_branches(patcher: Any, device: torch.device | None = None) -> int:
    """Make every Bonsai layer's ``bonsai_lora`` match ``patcher.patches``; returns the number of layers with branches.

    Layers whose branches were already built for this ``patches_uuid``, device and dtype are left
    alone, so re-loads of the same patcher (lowvram partial loads) cost nothing.
    """
    model = patcher.model
    dtype = _branch_dtype(model)
    with_lora = 0
    for key, module in bonsai_layers(model).items():
        patches = patcher.patches.get(key)
        if not patches:
            module.bonsai_lora = []
            setattr(module, _STAMP_ATTR, None)
            continue
        target = device if device is not None else module.codes.device
        stamp = (patcher.patches_uuid, str(target), dtype)
        with_lora += 1
        if getattr(module, _STAMP_ATTR, None) == stamp:
            continue
        n, k = layer_shape(module)
        module.bonsai_lora = [b.to(torch.device(target), dtype) for b in branches_from_patches(key, patches, n, k)]
        setattr(module, _STAMP_ATTR, stamp)
    return with_lora


def clear_lora_branches(model: torch.nn.Module) -> None:
    for module in bonsai_layers(model).values():
        module.bonsai_lora = []
        setattr(module, _STAMP_ATTR, None)


def resolve_lowvram_patch(layer: torch.nn.Module, entry: Any) -> list[LowRankBranch] | None:
    """``BonsaiOps`` patch resolver for ComfyUI's lowvram ``LowVramPatch`` entries on a packed layer.

    Under lowvram, ComfyUI leaves offloaded layers' patches in ``layer.weight_function`` (a dense-weight
    function). The ON_LOAD callback already turned the same patches into ``layer.bonsai_lora`` in that
    very ``load()``, so the entry resolves to nothing. Without the callback (a patcher that never got
    :func:`install_lora_support`) the entry's own patches are translated, once, and kept on the entry.
    """
    low_vram_patch = comfy_features.optional("comfy.model_patcher", "LowVramPatch", "LoRA on offloaded packed layers")
    if low_vram_patch is None or not isinstance(entry, low_vram_patch):
        return None
    if getattr(layer, _STAMP_ATTR, None) is not None:
        return []
    cached = getattr(entry, "bonsai_branches", None)
    if cached is None:
        n, k = layer_shape(layer)
        dtype = _branch_dtype_of_layer(layer)
        cached = [b.to(layer.codes.device, dtype) for b in branches_from_patches(entry.key, entry.patches[entry.key], n, k)]
        entry.bonsai_branches = cached
    return cached


def _branch_dtype_of_layer(layer: torch.nn.Module) -> torch.dtype:
    dtype = getattr(layer, "bonsai_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _on_load(patcher: Any, device_to: Any, lowvram_model_memory: Any, force_patch_weights: Any, full_load: Any) -> None:
    n = sync_lora_branches(patcher, device_to)
    if n:
        log.info("Bonsai LoRA: %d packed layers carry unmerged branches (%.1f MiB)", n, lora_nbytes(patcher.model) / 2**20)


def _on_detach(patcher: Any, unpatch_all: bool) -> None:
    # detach(unpatch_all=False) happens when ComfyUI switches to a clone with the *same* patches and
    # then skips load(): the branches must survive it. A full unpatch resets
    # current_weight_patches_uuid, so the next use goes through load() and rebuilds them.
    if unpatch_all:
        clear_lora_branches(patcher.model)


def install_lora_support(patcher: Any) -> Any:
    """Register the branch callbacks on a Bonsai MODEL's ModelPatcher (idempotent); returns the patcher.

    Call it on the patcher the loader returns, before anything clones it: ``clone()`` copies callbacks,
    so every LoraLoader clone inherits them.
    """
    from comfy.patcher_extension import CallbacksMP

    for call_type, fn in ((CallbacksMP.ON_LOAD, _on_load), (CallbacksMP.ON_DETACH, _on_detach)):
        patcher.remove_callbacks_with_key(call_type, CALLBACK_KEY)
        patcher.add_callback_with_key(call_type, CALLBACK_KEY, fn)
    return patcher


register_patch_resolver(resolve_lowvram_patch)
