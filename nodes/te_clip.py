"""ComfyUI's Klein text encoder (``klein_te`` + ``KleinTokenizer``) on the released 4-bit Qwen3 weights.

The result is what ``CLIPLoader(type="flux2")`` returns for a dense Qwen3-4B file -- ComfyUI's own
``comfy.text_encoders.flux.klein_te`` (``Flux2TEModel`` around the Llama2-family ``Qwen3_4B``,
hidden states before layers 9/18/27 stacked to 3 x hidden) with ComfyUI's ``KleinTokenizer``
(chat template, 512 tokens) -- so the stock ``CLIPTextEncode`` works unchanged. Two things differ:

* the operations: :class:`Packed4BitOps` replaces ``Linear`` and ``Embedding`` with modules whose
  state is the released 4-bit codes + scales + zeros/biases as buffers. ``forward`` dequantizes
  one layer (or only the looked-up embedding rows) at a time, in the activation dtype, and drops
  it; the model is never expanded to bf16.
* the model config is read from the folder's ``config.json`` (so reduced-size test models work).

The CLIP's ``ModelPatcher`` is ComfyUI's, so model management moves the packed buffers to the GPU
for encoding and back to the offload device when memory is needed (or on "unload models"),
exactly like a stock text encoder. Nothing global is patched: stock ``CLIPLoader`` is unaffected.
This module builds the CLIP; :mod:`.text_encoder` finds and reads the folders (not a node module).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.text_encoders.flux
import comfy.text_encoders.llama
import folder_paths
import torch

from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.te_formats import FORMULA, TEWeights, dequantize_4bit, head_dim, rope_theta
from ..kernels import triton_dequant4
from . import comfy_features

MODEL_NAME = "qwen3_4b"  # the name klein_te gives its clip model; model_options keys derive from it
_OFFSET_KEYS = {"hqq": "weight_zeros", "mlx": "weight_biases"}
_KEYS_LAYOUT = {v: k for k, v in _OFFSET_KEYS.items()}


# ----------------------------------------------------------------------------- operations


class _PackedState(torch.nn.Module):
    """Shared loading of ``<prefix>weight_codes`` / ``weight_scales`` / ``weight_zeros|weight_biases``."""

    layout: str | None = None

    def _take_packed(self, state_dict: dict[str, Any], prefix: str, missing_keys: list[str], rows: int, cols: int) -> None:
        comfy.ops.run_every_op()  # ComfyUI's /interrupt stops a text-encoder load between layers
        offset_key = next((k for k in _KEYS_LAYOUT if prefix + k in state_dict), None)
        if prefix + "weight_codes" not in state_dict or prefix + "weight_scales" not in state_dict or offset_key is None:
            missing_keys.append(prefix + "weight_codes")
            return
        codes = state_dict.pop(prefix + "weight_codes")
        scales = state_dict.pop(prefix + "weight_scales")
        offsets = state_dict.pop(prefix + offset_key)
        if (
            codes.dtype != torch.uint8
            or tuple(codes.shape) != (rows, cols // 2)
            or scales.shape != offsets.shape
            or scales.shape[0] != rows
        ):
            raise BonsaiFormatError(
                prefix.rstrip("."),
                "weight_codes",
                f"packed {codes.dtype} {list(codes.shape)} / scales {list(scales.shape)} do not fit a [{rows}, {cols}] 4-bit weight",
            )
        self.layout = _KEYS_LAYOUT[offset_key]
        self.group_size = cols // scales.shape[1]
        # buffers, not parameters: ComfyUI moves them with the module and counts them in model_size(),
        # and no one (LoRA, casting) mistakes packed codes for a dense weight
        for name, t in (("weight_codes", codes), ("weight_scales", scales), (offset_key, offsets)):
            self.register_buffer(name, t, persistent=True)
            setattr(self, f"{name}_comfy_model_dtype", t.dtype)  # the dynamic patcher casts buffers to this

    def _packed(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        offsets = getattr(self, _OFFSET_KEYS[self.layout])
        return (
            self.weight_codes.to(device, non_blocking=True),
            self.weight_scales.to(device, non_blocking=True),
            offsets.to(device, non_blocking=True),
        )


class Packed4BitLinear(_PackedState):
    """``y = x @ W.T`` with ``W`` held as 4-bit codes; dense only for the duration of one call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if bias:
            raise ValueError("Qwen3 linears have no bias")
        self.in_features, self.out_features = in_features, out_features

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:  # noqa: ANN001
        self._take_packed(state_dict, prefix, missing_keys, self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy_features.interrupt_check()()  # as stock ops do (comfy.ops.run_every_op, when this ComfyUI has it)
        codes, scales, offsets = self._packed(x.device)
        if triton_dequant4.available(x.device) and x.dtype in (torch.bfloat16, torch.float16, torch.float32):
            # one launch instead of ~8 torch ops and 4 temporaries per linear (same bits)
            offset_first, sign = FORMULA[self.layout]
            w = torch.empty(self.out_features, self.in_features, dtype=x.dtype, device=x.device)
            triton_dequant4.dequantize4_into(codes, scales, offsets, w, offset_first=offset_first, offset_sign=sign)
        else:
            w = dequantize_4bit(codes, scales, offsets, self.layout, x.dtype, self.group_size)
        return torch.nn.functional.linear(x, w)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"


class PackedOrDenseEmbedding(_PackedState):
    """The token embedding: dense (HQQ ships it bf16) or 4-bit (MLX quantizes it too).

    Rows are looked up where the table lives and only those rows move (and, packed, are dequantized).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *args: Any, device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", None)  # dense table (HQQ); stays None when packed (MLX)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:  # noqa: ANN001
        if prefix + "weight" in state_dict:
            w = state_dict.pop(prefix + "weight")
            if tuple(w.shape) != (self.num_embeddings, self.embedding_dim):
                raise BonsaiFormatError(
                    prefix.rstrip("."), "weight", f"shape {list(w.shape)}, expected {[self.num_embeddings, self.embedding_dim]}"
                )
            self.register_buffer("weight", w, persistent=True)
            self.weight_comfy_model_dtype = w.dtype
        else:
            self._take_packed(state_dict, prefix, missing_keys, self.num_embeddings, self.embedding_dim)

    def forward(self, input_ids: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        out_dtype = out_dtype or torch.float32
        if self.weight is not None:
            rows = torch.nn.functional.embedding(input_ids.to(self.weight.device), self.weight)
            return rows.to(input_ids.device, out_dtype)
        where = self.weight_codes.device
        ids = input_ids.to(where).reshape(-1)
        offsets = getattr(self, _OFFSET_KEYS[self.layout])
        rows = dequantize_4bit(self.weight_codes[ids], self.weight_scales[ids], offsets[ids], self.layout, out_dtype, self.group_size)
        return rows.to(input_ids.device).reshape(*input_ids.shape, self.embedding_dim)


class Packed4BitOps(comfy.ops.manual_cast):
    """ComfyUI operations for the packed TE: everything stock except Linear and Embedding."""

    Linear = Packed4BitLinear
    Embedding = PackedOrDenseEmbedding


# ----------------------------------------------------------------------------- model


def llama_config(config: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI ``Qwen3_4BConfig`` fields (and ``head_dim``) from an HF Qwen3 ``config.json``."""
    return {
        "vocab_size": config["vocab_size"],
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "max_position_embeddings": config.get("max_position_embeddings", 40960),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "rope_theta": rope_theta(config),
        "head_dim": head_dim(config),
    }


class ConfiguredQwen3(comfy.text_encoders.llama.Qwen3_4B):
    """ComfyUI's ``Qwen3_4B`` whose geometry comes from the config dict.

    ``Qwen3_4BConfig`` keeps ``head_dim`` as a class attribute (not a dataclass field), so it is set
    on the instance; every other value goes through the dataclass as in stock ComfyUI.
    """

    def __init__(self, config_dict: dict[str, Any], dtype: Any, device: Any, operations: Any) -> None:
        torch.nn.Module.__init__(self)
        fields = {f.name for f in dataclasses.fields(comfy.text_encoders.llama.Qwen3_4BConfig)}
        config = comfy.text_encoders.llama.Qwen3_4BConfig(**{k: v for k, v in config_dict.items() if k in fields})
        if "head_dim" in config_dict:
            config.head_dim = int(config_dict["head_dim"])
        self.num_layers = config.num_hidden_layers
        self.model = comfy.text_encoders.llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.dtype = dtype


class ConfiguredQwen3Model(comfy.text_encoders.flux.Qwen3_4BModel):
    """Stock ``Qwen3_4BModel`` (layers 9/18/27, pad 151643, attention masks) on :class:`ConfiguredQwen3`."""

    def __init__(
        self,
        device: Any = "cpu",
        layer: Any = None,
        layer_idx: Any = None,
        dtype: Any = None,
        attention_mask: bool = True,
        model_options: dict[str, Any] | None = None,
    ) -> None:
        comfy.sd1_clip.SDClipModel.__init__(
            self,
            device=device,
            layer=list(layer) if layer is not None else [9, 18, 27],
            layer_idx=layer_idx,
            textmodel_json_config={},  # geometry arrives through model_options["qwen3_4b_model_config"]
            dtype=dtype,
            special_tokens={"pad": 151643},
            layer_norm_hidden_state=False,
            model_class=ConfiguredQwen3,
            enable_attention_masks=attention_mask,
            return_attention_masks=attention_mask,
            model_options=model_options or {},
        )


def te_state_dict(te: TEWeights) -> dict[str, torch.Tensor]:
    """HF names with each packed ``X.weight`` split into ``X.weight_codes/_scales/_zeros|_biases``."""
    sd = dict(te.dense)
    for name, p in te.packed.items():
        base = name[: -len("weight")]
        sd[base + "weight_codes"] = p.codes
        sd[base + "weight_scales"] = p.scales
        sd[base + _OFFSET_KEYS[p.layout]] = p.offsets
    return sd


def clip_model_options(config: dict[str, Any], operations: Any = None) -> dict[str, Any]:
    """``model_options`` for ``comfy.sd.CLIP`` building ``klein_te`` with this config (and ops)."""
    options: dict[str, Any] = {f"{MODEL_NAME}_class": ConfiguredQwen3Model, f"{MODEL_NAME}_model_config": llama_config(config)}
    if operations is not None:
        options["custom_operations"] = operations
    return options


class _Target:
    """What ``comfy.sd.CLIP`` expects from a detection result (``params``, ``clip``, ``tokenizer``)."""

    def __init__(self, clip: Any, tokenizer: Any) -> None:
        self.params: dict[str, Any] = {}
        self.clip = clip
        self.tokenizer = tokenizer


def build_clip(
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    operations: Any = None,
    dtype: torch.dtype = torch.bfloat16,
    extra_options: dict[str, Any] | None = None,
) -> comfy.sd.CLIP:
    """A stock ``comfy.sd.CLIP`` around ``klein_te`` + ``KleinTokenizer``; ``operations=None`` means
    ComfyUI's stock ``manual_cast`` ops with dense weights (the reference path)."""
    target = _Target(comfy.text_encoders.flux.klein_te(dtype_llama=dtype, model_type=MODEL_NAME), comfy.text_encoders.flux.KleinTokenizer)
    options = {**clip_model_options(config, operations), **(extra_options or {})}
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    # CLIP sizes its initial placement as parameters x dtype size: pass the bytes actually held
    parameters = nbytes // torch.empty((), dtype=dtype).element_size()
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        parameters=parameters,
        state_dict=[state_dict],
        model_options=options,
    )
    return clip
