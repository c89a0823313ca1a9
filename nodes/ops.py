"""ComfyUI ``custom_operations`` that keep Bonsai's quantized linears packed.

ComfyUI builds its own FLUX.2 model (``comfy.ldm.flux.model.Flux``) and creates every linear
through ``operations.Linear``. :class:`BonsaiOps` is ``comfy.ops.manual_cast`` with one change:
its ``Linear`` allocates nothing in ``__init__`` and decides what it is when the state dict
arrives:

* packed: ``<prefix>weight`` (uint8 codes) + ``<prefix>weight_scale`` (+ ``<prefix>weight_zero`` for
  an affine layer, see ``bonsai_core.packing.PackedWeight.zeros``) are kept as the buffers
  ``codes`` / ``scales`` (/ ``zeros``), never a dense copy; ``forward`` runs
  :func:`bonsai_core.dispatch.lowbit_linear` (as one torch custom op under ``torch.compile``,
  see :mod:`.lowbit_op`) and then the unmerged LoRA branches;
* dense (the 9 edge layers, kept dense so ComfyUI's model detection works): an ordinary
  ``weight`` Parameter, and ``forward`` is stock ``manual_cast`` (casting, lowvram, LoRA patches).

A packed layer's ``weight`` is never None: it is a view of ``codes``/``scales`` as ComfyUI's own
quantized-weight type (:mod:`.packed_weight`), with the logical ``[out, in]`` shape, so generic
ComfyUI code (shape checks, casts, backups, offload estimates) can read it; the view is not a
Parameter, so ComfyUI's merge loops never re-quantize it, and ``set_weight`` keeps the codes.

``_save_to_state_dict`` emits the packed tensors under ``<prefix>weight`` / ``<prefix>weight_scale``,
so ``ModelPatcher.model_size()`` counts packed bytes and LoRA key maps (built from
``model.state_dict()`` keys) find every ``<layer>.weight``.

ComfyUI memory management keeps working because codes/scales are registered buffers: ``.to()``
moves them, lowvram leaves a layer on the offload device (then each call streams its packed bytes
to the input's device), dynamic VRAM moves buffers with ``set_attr_buffer``. ``weight_function``
entries (LoRA patches under lowvram, weight wrappers) are dense-weight functions and are never
applied to packed data: registered *patch resolvers* (``register_patch_resolver``; the LoRA
module installs one) turn them into low-rank branches, and an entry nobody resolves is an error,
not a silent no-op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import comfy.ops
import torch

from ..bonsai_core import dispatch
from ..bonsai_core.canonical import SCALE_LEAF, ZERO_LEAF
from ..bonsai_core.escape import escaping_logger
from ..bonsai_core.klein import GROUP_SIZE
from ..bonsai_core.lowrank import LowRankBranch, apply_low_rank
from ..kernels import BACKENDS
from . import comfy_features, lowbit_op, packed_weight

dispatch.register_backends(BACKENDS)  # bonsai_core never imports kernels: the pack hands them over

log = escaping_logger("bonsai_image.ops")


# A resolver gets (layer, one entry of layer.weight_function) and returns the low-rank branches
# that entry stands for, or None when the entry is not its kind.
PatchResolver = Callable[["BonsaiOps.Linear", Any], "list[LowRankBranch] | None"]
_PATCH_RESOLVERS: list[PatchResolver] = []


def register_patch_resolver(fn: PatchResolver) -> None:
    """Teach packed layers to honour a kind of ``weight_function`` entry (idempotent)."""
    if fn not in _PATCH_RESOLVERS:
        _PATCH_RESOLVERS.append(fn)


class UnresolvedPatchError(RuntimeError):
    """ComfyUI attached a dense-weight patch to a packed layer and nothing can express it as a branch."""


class BonsaiOps(comfy.ops.manual_cast):
    """``manual_cast`` ops whose ``Linear`` holds Bonsai weights packed. Use :func:`make_bonsai_ops`
    to get a copy configured with a backend and the checkpoint's bit width."""

    class Linear(comfy.ops.manual_cast.Linear):
        bonsai_backend: str = "auto"
        bonsai_expected_bits: int | None = None

        def __init__(
            self, in_features: int, out_features: int, bias: bool = True, device: Any = None, dtype: torch.dtype | None = None
        ) -> None:
            # Allocate nothing: the state dict decides packed or dense, and a dense [out, in]
            # placeholder would cost the full-precision model size in RAM for a moment.
            torch.nn.Module.__init__(self)
            self.in_features = in_features
            self.out_features = out_features
            # "weight" is a class property (the packed view); its Parameter slot is made directly,
            # because register_parameter refuses a name that hasattr() already finds
            self._parameters["weight"] = None
            self.register_parameter("bias", None)
            self.register_buffer("codes", None)
            self.register_buffer("scales", None)
            self.register_buffer("zeros", None)  # affine layers only: W = q * scales + zeros
            self.weight_comfy_model_dtype = dtype
            self.bias_comfy_model_dtype = dtype
            self.bonsai_wants_bias = bias
            self.bonsai_dtype = dtype
            self.bonsai_bits = 0
            self.bonsai_key = ""  # BFL module name, e.g. "double_blocks.0.img_attn.qkv"
            self.bonsai_state: dict[str, Any] = {}  # backend-prepared data for the resident codes
            self.bonsai_lora: list[LowRankBranch] = []  # filled by the LoRA integration
            self._bonsai_state_owner: tuple[Any, ...] | None = None
            self.bonsai_uid = lowbit_op.register_layer(self)  # names this layer inside the custom op

        # ---- what this layer is -------------------------------------------------------------

        @property
        def is_packed(self) -> bool:
            return self._buffers.get("codes") is not None

        # ---- the weight ComfyUI's generic code sees (nodes/packed_weight.py) -------------------

        @property
        def weight(self) -> torch.Tensor | None:  # type: ignore[override]
            # Packed: a view of codes/scales with the logical [out, in] shape (never None, never
            # dense), so get_key_weight, calculate_shape, offload estimates and backups work.
            codes = self._buffers.get("codes")
            if codes is None:
                return self._parameters.get("weight")
            return packed_weight.packed_view(
                codes, self._buffers["scales"], self.bonsai_bits, self._view_dtype(), self._buffers.get("zeros")
            )

        def _view_dtype(self) -> torch.dtype:
            dtype = self.bonsai_dtype
            return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else self._buffers["scales"].dtype

        def register_parameter(self, name: str, param: torch.nn.Parameter | None) -> None:
            # ComfyUI restores backed-up weights with set_attr_param (a Parameter of the backup).
            # On a packed layer that backup is a view of codes/scales: take its tensors back as the
            # buffers; the layer never turns into a dense Parameter.
            if name == "weight" and param is not None and self._buffers.get("codes") is not None:
                self._adopt_weight(param)
                return
            super().register_parameter(name, param)

        def _adopt_weight(self, value: torch.Tensor) -> None:
            if packed_weight.is_packed_view(value):
                codes, scales, bits = packed_weight.view_tensors(value)
                if bits != self.bonsai_bits or tuple(value.shape) != (self.out_features, self.in_features):
                    raise packed_weight.PackedWeightWriteError(
                        f"Bonsai layer '{self.bonsai_key}': a packed weight of another layer was assigned"
                    )
                self.register_buffer("codes", codes)
                self.register_buffer("scales", scales)
                self.register_buffer("zeros", packed_weight.view_zeros(value))
            elif tuple(value.shape) == (self.out_features, self.in_features) and not packed_weight.quantized_views():
                pass  # without comfy-kitchen, backups are dequantized copies of these very codes
            else:
                raise packed_weight.PackedWeightWriteError(
                    f"Bonsai layer '{self.bonsai_key}' is packed; ComfyUI tried to replace its weight with a dense "
                    f"{type(value).__name__} {list(value.shape)}. Bonsai layers stay binary/ternary (LoRA is applied as unmerged branches)"
                )

        # ComfyUI's quantized-layer protocol (get_key_weight looks these up): patch_weight_to_device
        # dequantizes with convert_weight and hands the merged result to set_weight. Dense layers
        # do not have them (AttributeError -> stock merging).
        @property
        def convert_weight(self) -> Callable[..., torch.Tensor]:
            if not self.is_packed:
                raise AttributeError("convert_weight")
            return self._convert_packed_weight

        @property
        def set_weight(self) -> Callable[..., torch.Tensor | None]:
            if not self.is_packed:
                raise AttributeError("set_weight")
            return self._set_packed_weight

        def _convert_packed_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs: Any) -> torch.Tensor:
            return weight.dequantize() if packed_weight.is_packed_view(weight) else weight

        def _set_packed_weight(
            self, weight: torch.Tensor, inplace_update: bool = False, seed: Any = None, return_weight: bool = False, **kwargs: Any
        ) -> torch.Tensor | None:
            # The codes are never re-quantized from a merged weight: the patcher's LoRA patches are
            # applied by this layer as unmerged branches (nodes/lora.py, ON_LOAD callback), which
            # also refuses patch kinds that have no branch form. The layer keeps its packed bytes.
            if inplace_update:
                # weight hooks (scheduled LoRA) write merged weights in place at every keyframe
                raise packed_weight.PackedWeightWriteError(
                    f"Bonsai layer '{self.bonsai_key}': in-place weight patching (weight hooks) cannot change binary/ternary "
                    "codes; apply the LoRA with LoraLoader / LoraLoaderModelOnly instead"
                )
            if return_weight:
                return self.weight  # what the layer holds: packed (a save writes the packed checkpoint)
            return None

        def extra_repr(self) -> str:
            kind = f"packed {self.bonsai_bits}-bit" if self.is_packed else ("dense" if self.weight is not None else "empty")
            return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, backend={self.bonsai_backend}"

        # ---- state dict ------------------------------------------------------------------------

        def _load_from_state_dict(
            self,
            state_dict: dict[str, torch.Tensor],
            prefix: str,
            local_metadata: dict[str, Any],
            strict: bool,
            missing_keys: list[str],
            unexpected_keys: list[str],
            error_msgs: list[str],
        ) -> None:
            comfy_features.interrupt_check()()  # ComfyUI's /interrupt stops a model load between layers
            wkey, skey, bkey, zkey = prefix + "weight", prefix + SCALE_LEAF, prefix + "bias", prefix + ZERO_LEAF
            self.bonsai_key = prefix[:-1] if prefix.endswith(".") else prefix
            for k in state_dict:
                if k.startswith(prefix) and k not in (wkey, skey, bkey, zkey):
                    unexpected_keys.append(k)
            if skey in state_dict:
                if wkey not in state_dict:
                    missing_keys.append(wkey)
                else:
                    self._load_packed(state_dict[wkey], state_dict[skey], wkey, error_msgs, state_dict.get(zkey))
            elif zkey in state_dict:
                unexpected_keys.append(zkey)
            elif wkey in state_dict:
                self._load_dense(state_dict[wkey], wkey, error_msgs)
            else:
                missing_keys.append(wkey)
            if bkey in state_dict:
                b = state_dict[bkey]
                if tuple(b.shape) != (self.out_features,):
                    error_msgs.append(f"{bkey}: bias shape {list(b.shape)} does not match out_features {self.out_features}")
                else:
                    self.bias = torch.nn.Parameter(self._to_model_dtype(b), requires_grad=False)
            elif self.bonsai_wants_bias:
                missing_keys.append(bkey)

        def _to_model_dtype(self, t: torch.Tensor) -> torch.Tensor:
            # Same as stock ops, which copy the file tensor into a parameter of the model dtype.
            return t.to(self.bonsai_dtype) if self.bonsai_dtype is not None and t.dtype != self.bonsai_dtype else t

        def _load_packed(
            self, codes: torch.Tensor, scales: torch.Tensor, key: str, error_msgs: list[str], zeros: torch.Tensor | None = None
        ) -> None:
            n, k = self.out_features, self.in_features
            if codes.dtype != torch.uint8 or codes.ndim != 2:
                error_msgs.append(f"{key}: packed codes must be 2-D uint8, found {codes.dtype} {list(codes.shape)}")
                return
            if scales.ndim != 2 or not scales.is_floating_point():
                error_msgs.append(f"{key}_scale: scales must be a 2-D float tensor, found {scales.dtype} {list(scales.shape)}")
                return
            if k % GROUP_SIZE or tuple(scales.shape) != (n, k // GROUP_SIZE):
                error_msgs.append(f"{key}_scale: scales {list(scales.shape)} do not fit a [{n}, {k}] layer with {GROUP_SIZE}-groups")
                return
            bits, rem = divmod(codes.shape[1] * 8, k)
            if codes.shape[0] != n or rem or bits not in (1, 2):
                error_msgs.append(f"{key}: codes {list(codes.shape)} are not a 1- or 2-bit packing of a [{n}, {k}] layer")
                return
            if self.bonsai_expected_bits is not None and bits != self.bonsai_expected_bits:
                error_msgs.append(f"{key}: codes are {bits}-bit but the checkpoint is {self.bonsai_expected_bits}-bit (mixed variants?)")
                return
            if zeros is not None and (zeros.dtype != scales.dtype or zeros.shape != scales.shape):
                error_msgs.append(f"{key}_zero: zeros {zeros.dtype} {list(zeros.shape)} must match the scales ({scales.dtype} {list(scales.shape)})")
                return
            self.weight = None
            self.codes = codes
            self.scales = scales
            self.zeros = zeros
            self.bonsai_bits = bits
            self._drop_state()

        def _load_dense(self, w: torch.Tensor, key: str, error_msgs: list[str]) -> None:
            if tuple(w.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"{key}: dense weight {list(w.shape)} does not match [{self.out_features}, {self.in_features}]")
                return
            if not w.is_floating_point():
                error_msgs.append(f"{key}: {w.dtype} weight without '{key}_scale' (a packed layer whose scales are missing?)")
                return
            self.codes = None
            self.scales = None
            self.zeros = None
            self.bonsai_bits = 0
            self.weight = torch.nn.Parameter(self._to_model_dtype(w), requires_grad=False)

        def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
            def out(t: torch.Tensor) -> torch.Tensor:
                return t if keep_vars else t.detach()

            if self.codes is not None:
                destination[prefix + "weight"] = out(self.codes)
                destination[prefix + SCALE_LEAF] = out(self.scales)
                if self.zeros is not None:
                    destination[prefix + ZERO_LEAF] = out(self.zeros)
            elif self.weight is not None:
                destination[prefix + "weight"] = out(self.weight)
            if self.bias is not None:
                destination[prefix + "bias"] = out(self.bias)

        # ---- backend state follows the packed tensors ---------------------------------------

        def _drop_state(self) -> None:
            self.bonsai_state = {}
            self._bonsai_state_owner = None

        def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> BonsaiOps.Linear:
            # .to()/.cuda()/.cpu(): prepared data belongs to the old device; free it now, not at the next call.
            self._drop_state()
            before = {name: self._buffers.get(name) for name in ("scales", "zeros")}
            out = super()._apply(fn, recurse)
            for name, old in before.items():
                moved = self._buffers.get(name)
                if old is not None and moved is not None and moved.dtype != old.dtype:
                    # Module.to(dtype) casts every floating buffer; a rounded scale changes the model, so
                    # scales (and zeros) keep their exact dtype and only follow the device.
                    self._buffers[name] = old.to(device=moved.device)
            return out

        def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
            # Dynamic VRAM swaps buffers with comfy.utils.set_attr_buffer instead of .to().
            if name in ("codes", "scales", "zeros") and "_bonsai_state_owner" in self.__dict__:
                self._drop_state()
            super().register_buffer(name, tensor, persistent)

        def _resident_state(self, codes: torch.Tensor, scales: torch.Tensor) -> dict[str, Any]:
            owner = (codes.device, codes.data_ptr(), scales.data_ptr())
            if self._bonsai_state_owner != owner:
                self.bonsai_state = {}
                self._bonsai_state_owner = owner
            return self.bonsai_state

        # ---- forward ------------------------------------------------------------------------

        def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.codes is None:
                if self.weight is None:
                    raise RuntimeError(
                        f"Bonsai layer '{self.bonsai_key or '?'}' was never loaded (its tensors were missing from the checkpoint)"
                    )
                return super().forward(input, *args, **kwargs)  # dense edge layer: stock manual_cast
            comfy_features.interrupt_check()()  # as every stock op does (comfy.ops.run_every_op)
            return self._forward_packed(input)

        def _forward_packed(self, x: torch.Tensor) -> torch.Tensor:
            codes, scales, zeros = self.codes, self.scales, self.zeros
            if codes.device != x.device:
                # Offloaded (lowvram): stream this layer's packed bytes for one call; nothing is
                # cached for a copy that is dropped right after (lowbit_op gives it a fresh state).
                non_blocking = comfy_features.supports_non_blocking(x.device)
                codes = codes.to(x.device, non_blocking=non_blocking)
                scales = scales.to(x.device, non_blocking=non_blocking)
                zeros = zeros.to(x.device, non_blocking=non_blocking) if zeros is not None else None
            # one custom op under torch.compile (no graph break), a plain call in eager mode
            y = lowbit_op.call(x, codes, scales, self.bonsai_bits, self.bonsai_backend, self.bonsai_uid, zeros)
            branches = self.bonsai_lora + self._branches_from_weight_functions()
            if branches:
                y = apply_low_rank(x, y, branches)
            if self.bias is not None:
                bias = self.bias.to(device=y.device, dtype=y.dtype)
                for f in self.bias_function:
                    bias = f(bias)
                y = y + bias
            return y

        def _branches_from_weight_functions(self) -> list[LowRankBranch]:
            out: list[LowRankBranch] = []
            for entry in self.weight_function:
                for resolve in _PATCH_RESOLVERS:
                    branches = resolve(self, entry)
                    if branches is not None:
                        out.extend(branches)
                        break
                else:
                    raise UnresolvedPatchError(
                        f"Bonsai layer '{self.bonsai_key}' is packed, so ComfyUI's dense-weight patch {type(entry).__name__} "
                        f"cannot be applied to it, and no LoRA integration claimed it (is the Bonsai LoRA module loaded?)"
                    )
            return out


@functools.cache
def make_bonsai_ops(backend: str = "auto", bits: int | None = None) -> type[BonsaiOps]:
    """A :class:`BonsaiOps` whose linears use ``backend`` and expect ``bits``-bit codes.

    Cached so every load with the same settings shares one class (ComfyUI keeps references to
    operation classes in model configs)."""
    linear = type(
        "Linear", (BonsaiOps.Linear,), {"bonsai_backend": backend, "bonsai_expected_bits": bits, "__qualname__": "BonsaiOps.Linear"}
    )
    return type(f"BonsaiOps_{backend}_{bits}", (BonsaiOps,), {"Linear": linear})


def bonsai_linears(model: torch.nn.Module) -> Iterator[tuple[str, BonsaiOps.Linear]]:
    """Every Bonsai linear under ``model`` (packed and dense), with its module name."""
    for name, m in model.named_modules():
        if isinstance(m, BonsaiOps.Linear):
            yield name, m
