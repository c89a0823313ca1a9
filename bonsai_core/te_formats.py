"""The released 4-bit Qwen3-4B text encoders, read into one packed in-memory form.

Two layouts ship (docs/FORMAT.md, formats.md §7-8):

* ``text_encoder-hqq-4bit/`` (CUDA repos): ``qmodel.pt`` = ``torch.save({leaf_module_name:
  module.state_dict()})`` written by HQQ's ``save_quantized``; a quantized linear holds ``W_q``
  uint8 ``[N*K/64/2, 64]`` (``4bit_u8``: the rows of the ``(N*K/64, 64)`` group matrix, first
  half in the high nibble), fp16 ``scale``/``zero`` ``(N*K/64, 1)``, ``axis=1``, and
  ``W = (q - zero) * scale``. Plain modules hold ``{"weight": ...}``.
* ``text_encoder-mlx-4bit/`` (Apple repos): ``model.safetensors`` with mlx-lm names
  (``model.`` prefix), ``<linear>.weight`` uint32 ``[N, K/8]`` LSB-first, ``.scales`` and
  ``.biases`` ``[N, K/64]``, and ``W = scales * q + biases``; ``embed_tokens`` is quantized too.

Both become :class:`Packed4Bit` (codes uint8 ``[N, K/2]``, code of column ``k`` in byte
``k // 2``, low nibble for even ``k`` -- MLX's words viewed as little-endian bytes) plus dense
tensors under HF ``Qwen3ForCausalLM`` names. :func:`dequantize_4bit` is the only place the
two dequantization formulas exist. It evaluates them in the requested dtype with the same
rounding steps as the reference implementations (separate multiply and add, no FMA), so the
result is bit-identical to ``mlx.core.dequantize`` and to HQQ's ``Quantizer.dequantize`` run
in that compute dtype.

Writers for both layouts (used for test fixtures) live in :mod:`bonsai_core.te_fixture`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BonsaiFormatError
from .safetensors_io import SafetensorsReader

log = logging.getLogger(__name__)

TE_GROUP_SIZE = 64
LAYOUTS = ("hqq", "mlx")
HQQ_FILE = "qmodel.pt"
MLX_FILE = "model.safetensors"
TE_FOLDER_NAMES = ("text_encoder-hqq-4bit", "text_encoder-mlx-4bit")

# Per decoder layer: the 7 quantized linears and the dense norms, HF names below model.layers.N.
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")


# ----------------------------------------------------------------------------- representation


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (0..15) -> ``[N, K/2]``; column ``2j`` in the low nibble of byte ``j``."""
    n, k = q.shape
    if k % 2:
        raise ValueError(f"K={k} is odd")
    q = q.to(torch.uint8).reshape(n, k // 2, 2)
    return q[..., 0] | (q[..., 1] << 4)


def unpack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[N, K/2]`` -> uint8 codes ``[N, K]``."""
    n, kb = codes.shape
    return torch.stack((codes & 15, codes >> 4), dim=-1).reshape(n, kb * 2)


def dequantize_4bit(
    codes: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    layout: str,
    dtype: torch.dtype = torch.float32,
    group_size: int = TE_GROUP_SIZE,
) -> torch.Tensor:
    """THE 4-bit dequantization, for rows ``codes [R, K/2]`` with ``scales``/``offsets [R, K/gs]``.

    ``hqq``: ``W = (q - zero) * scale``; ``mlx``: ``W = scale * q + bias``. Arithmetic happens
    in ``dtype`` with one rounding per operation, as HQQ (in its compute dtype) and MLX do.
    """
    q = unpack_nibbles(codes)
    r, k = q.shape
    g = scales.shape[-1]
    if k != g * group_size or scales.shape[0] != r or offsets.shape != scales.shape:
        raise ValueError(
            f"codes imply [{r}, {k}] but scales/offsets are {list(scales.shape)}/{list(offsets.shape)} (group size {group_size})"
        )
    q = q.to(dtype).view(r, g, group_size)
    s = scales.to(dtype).unsqueeze(-1)
    o = offsets.to(dtype).unsqueeze(-1)
    if layout == "hqq":
        w = (q - o) * s
    elif layout == "mlx":
        w = q * s + o
    else:
        raise ValueError(f"unknown 4-bit layout {layout!r}; expected one of {LAYOUTS}")
    return w.view(r, k)


@dataclass
class Packed4Bit:
    """One 4-bit weight ``[N, K]``: codes uint8 ``[N, K/2]``, scales and offsets ``[N, K/gs]``.

    ``offsets`` are HQQ zero points (code units) for ``layout="hqq"`` and MLX biases (weight
    units) for ``layout="mlx"``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    layout: str
    group_size: int = TE_GROUP_SIZE

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown 4-bit layout {self.layout!r}")
        if self.codes.dtype != torch.uint8 or self.codes.ndim != 2:
            raise ValueError(f"codes must be 2-D uint8, got {self.codes.dtype} {list(self.codes.shape)}")
        n, kb = self.codes.shape
        if self.scales.shape != (n, kb * 2 // self.group_size) or self.offsets.shape != self.scales.shape:
            raise ValueError(
                f"codes {list(self.codes.shape)} need scales/offsets [{n}, {kb * 2 // self.group_size}], got {list(self.scales.shape)}/{list(self.offsets.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.codes.shape[0], self.codes.shape[1] * 2)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_4bit(self.codes, self.scales, self.offsets, self.layout, dtype, self.group_size)


@dataclass
class TEWeights:
    """A whole text encoder: HF config, packed linears (and MLX's packed embedding), dense rest.

    Keys are HF ``Qwen3ForCausalLM`` weight names (``model.layers.0.self_attn.q_proj.weight``).
    """

    config: dict[str, Any]
    packed: dict[str, Packed4Bit]
    dense: dict[str, torch.Tensor]
    layout: str
    path: Path
    lm_head: str = "absent"  # "absent" | "tied" (HQQ may store the tied embedding as lm_head)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def packed_nbytes(self) -> int:
        return sum(p.nbytes for p in self.packed.values()) + sum(t.numel() * t.element_size() for t in self.dense.values())

    def dense_equivalent_nbytes(self, dtype: torch.dtype = torch.bfloat16) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        return sum(p.shape[0] * p.shape[1] * size for p in self.packed.values()) + sum(t.numel() * size for t in self.dense.values())

    def dequantized_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every weight dense (tests and reference comparisons only: this IS the bf16/fp32 expansion)."""
        sd = {k: v.to(dtype) for k, v in self.dense.items()}
        sd.update({k: p.dequantize(dtype) for k, p in self.packed.items()})
        return sd


# ----------------------------------------------------------------------------- config


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BonsaiFormatError(path, None, "config.json is missing next to the text encoder weights") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BonsaiFormatError(path, None, f"not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise BonsaiFormatError(path, None, "config.json is not a JSON object")
    # some exports nest the language model config (VL-style); the TE is a plain Qwen3 LM
    config = config.get("text_config", config)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if not isinstance(config.get(key), int):
            raise BonsaiFormatError(path, None, f"config.json lacks integer '{key}'")
    return config


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 1000000.0)


def expected_linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    h, i, hd = config["hidden_size"], config["intermediate_size"], head_dim(config)
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    per_layer = {
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
    return {f"model.layers.{n}.{name}.weight": shape for n in range(config["num_hidden_layers"]) for name, shape in per_layer.items()}


def expected_dense_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, hd = config["hidden_size"], head_dim(config)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(config["num_hidden_layers"]):
        for name in LAYER_NORMS:
            shapes[f"model.layers.{n}.{name}.weight"] = (hd,) if name.startswith("self_attn") else (h,)
    return shapes


def _check_complete(te: TEWeights, file: Path) -> None:
    """Every tensor the config implies is present with its shape; nothing is silently dropped."""
    want_packed = expected_linear_shapes(te.config)
    want_dense = expected_dense_shapes(te.config)
    embed = "model.embed_tokens.weight"
    for name, shape in want_packed.items():
        if name not in te.packed:
            raise BonsaiFormatError(file, name, "quantized linear is missing" + (" (stored dense?)" if name in te.dense else ""))
        if te.packed[name].shape != shape:
            raise BonsaiFormatError(file, name, f"shape {list(te.packed[name].shape)} does not match config.json ({list(shape)})")
    for name, shape in want_dense.items():
        if name == embed and name in te.packed:
            got = te.packed[name].shape
        elif name in te.dense:
            got = tuple(te.dense[name].shape)
        else:
            raise BonsaiFormatError(file, name, "tensor is missing")
        if tuple(got) != shape:
            raise BonsaiFormatError(file, name, f"shape {list(got)} does not match config.json ({list(shape)})")
    unknown = sorted((set(te.packed) - set(want_packed) - {embed}) | (set(te.dense) - set(want_dense)))
    if unknown:
        raise BonsaiFormatError(
            file, unknown[0], f"unexpected tensor for a {te.config['num_hidden_layers']}-layer Qwen3 ({len(unknown)} unexpected)"
        )


# ----------------------------------------------------------------------------- HQQ


def hqq_unpack_to_codes(w_q: torch.Tensor, shape: tuple[int, int], group_size: int) -> torch.Tensor:
    """HQQ ``4bit_u8`` ``[N*K/gs/2, gs]`` (axis=1) -> our codes ``[N, K/2]``."""
    n, k = shape
    q = torch.cat((w_q >> 4, w_q & 15), dim=0)  # (N*K/gs, gs): the group matrix, row-major over W
    return pack_nibbles(q.reshape(n, k))


def codes_to_hqq_packed(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`hqq_unpack_to_codes`."""
    q = unpack_nibbles(codes).reshape(-1, group_size)
    half = q.shape[0] // 2
    return (q[:half] << 4) | q[half:]


def _meta_str(v: Any) -> Any:
    # HQQ's encoded state dicts store strings as uint8 code points
    if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 1:
        return "".join(chr(int(c)) for c in v)
    return v


def _meta_int(v: Any) -> Any:
    return int(v.item()) if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def _hqq_linear(entry: dict[str, Any], file: Path, name: str) -> Packed4Bit:
    packing = _meta_str(entry.get("packing"))
    nbits, axis, gs = (_meta_int(entry.get(k)) for k in ("nbits", "axis", "group_size"))
    if packing != "4bit_u8" or nbits != 4:
        raise BonsaiFormatError(file, name, f"HQQ packing {packing!r} / nbits {nbits!r} is not 4bit_u8 / 4")
    if axis != 1:
        raise BonsaiFormatError(file, name, f"HQQ axis={axis}; only axis=1 (groups along in_features) is supported")
    if _meta_int(entry.get("quant_scale")) or _meta_int(entry.get("quant_zero")):
        raise BonsaiFormatError(file, name, "quantized HQQ scales/zeros are not supported")
    shape = entry.get("shape")
    if isinstance(shape, torch.Tensor):
        shape = tuple(int(x) for x in shape.tolist())
    if shape is None or len(shape) != 2:
        raise BonsaiFormatError(file, name, f"HQQ shape {shape!r} is not 2-D")
    n, k = (int(x) for x in shape)
    if not isinstance(gs, int) or gs <= 0 or k % gs or (n * k // gs) % 2:
        raise BonsaiFormatError(file, name, f"group size {gs!r} does not divide shape [{n}, {k}] into an even number of groups")
    w_q = entry.get("W_q")
    if not isinstance(w_q, torch.Tensor):
        raise BonsaiFormatError(file, name, "HQQ entry has no W_q tensor")
    w_q = w_q.detach()
    if _meta_int(entry.get("view_as_float")):
        w_q = w_q.view(torch.uint8)
    if w_q.dtype != torch.uint8 or tuple(w_q.shape) != (n * k // gs // 2, gs):
        raise BonsaiFormatError(file, name, f"W_q is {w_q.dtype} {list(w_q.shape)}, expected uint8 {[n * k // gs // 2, gs]}")
    if "zero_scale" in entry:  # offload_meta stores them stacked
        zero, scale = entry["zero_scale"][0], entry["zero_scale"][1]
    else:
        scale, zero = entry.get("scale"), entry.get("zero")
    groups = n * k // gs
    for what, t in (("scale", scale), ("zero", zero)):
        if not isinstance(t, torch.Tensor) or t.numel() != groups or not t.is_floating_point():
            raise BonsaiFormatError(file, name, f"HQQ {what} must be a float tensor of {groups} values, got {getattr(t, 'shape', t)!r}")
    if entry.get("bias") is not None:
        raise BonsaiFormatError(file, name, "HQQ linear has a bias; Qwen3 linears have none")
    return Packed4Bit(
        hqq_unpack_to_codes(w_q, (n, k), gs),
        # copies, not views: a view would keep the whole memory-mapped qmodel.pt (incl. the raw W_q) alive
        scale.detach().reshape(n, k // gs).clone(),
        zero.detach().reshape(n, k // gs).clone(),
        "hqq",
        gs,
    )


def read_hqq(folder: str | os.PathLike[str]) -> TEWeights:
    """Read ``text_encoder-hqq-4bit/`` (``config.json`` + ``qmodel.pt``) without dequantizing."""
    folder = Path(folder)
    file = folder / HQQ_FILE
    config = read_config(folder)
    if not file.is_file():
        raise BonsaiFormatError(file, None, "file not found")
    try:
        # weights_only: HQQ's own loader does the same; anything beyond tensors/containers/dtypes is refused
        # mmap keeps the 2.7 GB file out of RAM until each tensor is repacked; legacy (non-zip) files cannot be mapped
        raw = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as e:
        raise BonsaiFormatError(
            file, None, f"refused to unpickle (not a plain HQQ weight file, possibly malicious): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise BonsaiFormatError(file, None, f"cannot read the torch file (truncated or corrupt download?): {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise BonsaiFormatError(file, None, f"expected a dict of module state dicts, got {type(raw).__name__}")
    # key prefix: Qwen3ForCausalLM names leaves "model.layers.N...", Qwen3Model "layers.N..."
    prefix = "" if any(str(k).startswith("model.layers.") for k in raw) else "model."
    te = TEWeights(config=config, packed={}, dense={}, layout="hqq", path=folder, extra={"key_prefix": "model." if not prefix else ""})
    for module, entry in raw.items():
        if not isinstance(entry, dict):
            raise BonsaiFormatError(file, str(module), f"expected a module state dict, got {type(entry).__name__}")
        module = str(module)
        if module == "lm_head" or module.endswith(".lm_head"):
            # Qwen3-4B ties lm_head to the embedding; the text encoder never computes logits
            te.lm_head = "tied"
            continue
        name = prefix + module
        if "W_q" in entry:
            te.packed[name + ".weight"] = _hqq_linear(entry, file, name)
            continue
        for k, v in entry.items():
            if not isinstance(v, torch.Tensor):
                raise BonsaiFormatError(file, f"{name}.{k}", f"expected a tensor, got {type(v).__name__}")
            te.dense[f"{name}.{k}"] = v.detach().clone()  # see _hqq_linear: drop the file mapping
    _check_complete(te, file)
    return te


# ----------------------------------------------------------------------------- MLX


def _mlx_files(folder: Path) -> list[Path]:
    index = folder / (MLX_FILE + ".index.json")
    single = folder / MLX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (KeyError, ValueError) as e:
            raise BonsaiFormatError(index, None, f"corrupt safetensors index: {e}") from e
        return [folder / f for f in sorted(set(weight_map.values()))]
    raise BonsaiFormatError(single, None, "file not found")


def read_mlx(folder: str | os.PathLike[str]) -> TEWeights:
    """Read ``text_encoder-mlx-4bit/`` (mlx-lm 4-bit g64 safetensors) without dequantizing."""
    if sys.byteorder != "little":
        raise RuntimeError("MLX uint32 words are read as little-endian bytes; big-endian hosts are not supported")
    folder = Path(folder)
    config = read_config(folder)
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits", 4)
    if bits != 4:
        raise BonsaiFormatError(folder / "config.json", None, f"quantization bits={bits}; only 4-bit text encoders are supported")
    te = TEWeights(config=config, packed={}, dense={}, layout="mlx", path=folder)
    # in_features per quantized tensor from config.json: tells 4-bit words apart from other widths
    in_features = {k: shape[1] for k, shape in expected_linear_shapes(config).items()}
    in_features["model.embed_tokens.weight"] = config["hidden_size"]
    for file in _mlx_files(folder):
        reader = SafetensorsReader(file)
        keys = set(reader.keys())
        for key in sorted(keys):
            name = key if key.startswith("model.") or key.startswith("lm_head") else "model." + key
            if name.startswith("lm_head"):
                te.lm_head = "tied"
                continue
            if key.endswith((".scales", ".biases")):
                if key.rsplit(".", 1)[0] + ".weight" not in keys:
                    raise BonsaiFormatError(file, key, "quantization parameters without their weight")
                continue
            base = key[: -len(".weight")] if key.endswith(".weight") else None
            if base is not None and base + ".scales" in keys:
                if base + ".biases" not in keys:
                    raise BonsaiFormatError(file, base + ".biases", "tensor is missing (MLX affine quantization stores scales and biases)")
                te.packed[name] = _mlx_packed(reader, base, in_features.get(name), file)
            else:
                te.dense[name] = reader.get(key)
    _check_complete(te, folder / MLX_FILE)
    return te


def _mlx_packed(reader: SafetensorsReader, base: str, k: int | None, file: Path) -> Packed4Bit:
    """One mlx-lm quantized tensor; the group size is read from its shapes (mlx-lm allows per-layer overrides)."""
    wname = base + ".weight"
    if reader.dtype_name(wname) != "U32":
        raise BonsaiFormatError(file, wname, f"quantized weight is {reader.dtype_name(wname)}, expected U32")
    (n, words), (sn, g) = reader.shape(wname), reader.shape(base + ".scales")
    if k is not None and words * 8 != k:
        raise BonsaiFormatError(
            file, wname, f"uint32 [{n}, {words}] holds {words * 32 // k}-bit codes for in_features {k}; only 4-bit is supported"
        )
    gs = words * 8 // g if g else 0
    if sn != n or gs not in (32, 64, 128) or words * 8 != g * gs or reader.shape(base + ".biases") != (sn, g):
        raise BonsaiFormatError(file, wname, f"uint32 [{n}, {words}] with scales {[sn, g]} is not 4-bit with group size 32, 64 or 128")
    codes = reader.get(wname).view(torch.uint8)  # little-endian words: LSB-first nibbles = our byte order
    return Packed4Bit(codes, reader.get(base + ".scales"), reader.get(base + ".biases"), "mlx", gs)


# ----------------------------------------------------------------------------- folders


def te_layout(folder: str | os.PathLike[str]) -> str | None:
    folder = Path(folder)
    if (folder / HQQ_FILE).is_file():
        return "hqq"
    if (folder / MLX_FILE).is_file() or (folder / (MLX_FILE + ".index.json")).is_file():
        return "mlx"
    return None


def resolve_te_folder(path: str | os.PathLike[str]) -> Path:
    """A released snapshot root (holding ``text_encoder-*-4bit/``) or the TE folder itself."""
    path = Path(path)
    if te_layout(path):
        return path
    for name in TE_FOLDER_NAMES:
        if te_layout(path / name):
            return path / name
    found = sorted(p for p in path.glob("text_encoder*") if p.is_dir() and te_layout(p)) if path.is_dir() else []
    if found:
        return found[0]
    raise BonsaiFormatError(
        path,
        None,
        f"no 4-bit text encoder here: expected {HQQ_FILE} or {MLX_FILE} (+ config.json), or a {'/'.join(TE_FOLDER_NAMES)} subfolder",
    )


def read_te(path: str | os.PathLike[str]) -> TEWeights:
    folder = resolve_te_folder(path)
    return read_hqq(folder) if te_layout(folder) == "hqq" else read_mlx(folder)


def find_tokenizer_dir(te_folder: str | os.PathLike[str]) -> Path | None:
    """The tokenizer shipped with a TE: ``<te>/tokenizer/`` (HQQ), files in ``<te>/`` (MLX) or ``<snapshot>/tokenizer/``."""
    te_folder = Path(te_folder)
    for cand in (te_folder / "tokenizer", te_folder, te_folder.parent / "tokenizer"):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.json").is_file():
            return cand
    return None


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None
