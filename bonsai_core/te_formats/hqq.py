"""HQQ text encoders (``text_encoder-hqq-4bit/``, the CUDA releases), read without dequantizing.

``qmodel.pt`` = ``torch.save({leaf_module_name: module.state_dict()})`` written by HQQ's
``save_quantized``. A quantized linear holds ``W_q`` uint8 ``[N*K/64/2, 64]`` (``4bit_u8``: the
rows of the ``(N*K/64, 64)`` group matrix, first half in the high nibble), fp16 ``scale`` /
``zero`` ``(N*K/64, 1)``, ``axis=1``, and ``W = (q - zero) * scale``. 64 is the release's group
size; what is read is each layer's own ``group_size`` entry. Plain modules hold ``{"weight": ...}``. The archive is checked and loaded by :mod:`bonsai_core.torch_archive`
(stored entries only, bounded pickle, ``weights_only``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import BonsaiFormatError
from ..packing import check_dense_values
from ..torch_archive import load_archive
from .config import check_complete, check_inventory, read_config
from .packed import Packed4Bit, TEWeights, check_te_values, pack_nibbles, unpack_nibbles

HQQ_FILE = "qmodel.pt"
MAX_DIM = 1 << 20  # a Qwen3 linear or embedding dimension (the vocabulary, 151,936, is the largest)


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
    # HQQ's encoded state dicts store strings as uint8 code points (short ones: "4bit_u8")
    if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 1 and v.numel() <= 64:
        return "".join(chr(int(c)) for c in v)
    return v


def _meta_int(v: Any) -> Any:
    # integer metadata may be stored as a one-element tensor; anything else is returned as is and refused by the caller
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and not v.is_complex():
        return int(v.item())
    return v


def _flag(entry: dict[str, Any], key: str, file: Path, name: str) -> bool:
    """A yes/no HQQ setting: absent, False/0 or True/1 (plain or a one-element tensor)."""
    v = _meta_int(entry.get(key))
    if v is None or v is False or (type(v) is int and v == 0):
        return False
    if v is True or (type(v) is int and v == 1):
        return True
    raise BonsaiFormatError(file, name, f"HQQ setting {key!r} is {str(v)[:40]}, expected true or false")


def _hqq_shape(entry: dict[str, Any], file: Path, name: str) -> tuple[int, int]:
    """The logical ``[N, K]`` an HQQ entry declares (its ``shape`` metadata), read without touching weights."""
    shape = entry.get("shape")
    if isinstance(shape, torch.Tensor) and shape.numel() == 2 and not shape.is_floating_point():
        shape = tuple(int(x) for x in shape.tolist())
    if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(type(x) is int and 0 < x <= MAX_DIM for x in shape):
        raise BonsaiFormatError(file, name, f"HQQ shape {str(shape)[:80]} is not two positive integers up to {MAX_DIM}")
    return shape[0], shape[1]


def _hqq_linear(entry: dict[str, Any], file: Path, name: str) -> Packed4Bit:
    packing = _meta_str(entry.get("packing"))
    nbits, axis, gs = (_meta_int(entry.get(k)) for k in ("nbits", "axis", "group_size"))
    if not isinstance(packing, str) or packing != "4bit_u8" or type(nbits) is not int or nbits != 4:
        raise BonsaiFormatError(file, name, f"HQQ packing {str(packing)[:40]!r} / nbits {str(nbits)[:20]} is not 4bit_u8 / 4")
    if type(axis) is not int or axis != 1:
        raise BonsaiFormatError(
            file,
            name,
            f"HQQ axis={str(axis)[:20]}: groups run down the output features; only axis=1 (groups along in_features, what the "
            "release and hqq's gemlite backend use) can be read packed - use the MLX or bf16 text encoder, or re-quantize with axis=1",
        )
    if _flag(entry, "quant_scale", file, name) or _flag(entry, "quant_zero", file, name):
        raise BonsaiFormatError(file, name, "quantized HQQ scales/zeros are not supported")
    n, k = _hqq_shape(entry, file, name)
    if type(gs) is not int or gs <= 0 or k % gs or (n * k // gs) % 2:
        raise BonsaiFormatError(file, name, f"group size {gs!r} does not divide shape [{n}, {k}] into an even number of groups")
    w_q = entry.get("W_q")
    if not isinstance(w_q, torch.Tensor):
        raise BonsaiFormatError(file, name, "HQQ entry has no W_q tensor")
    w_q = w_q.detach()
    if _flag(entry, "view_as_float", file, name):
        try:
            w_q = w_q.view(torch.uint8)
        except RuntimeError as e:
            raise BonsaiFormatError(file, name, f"W_q stored as float cannot be viewed as bytes: {e}") from None
    if w_q.dtype != torch.uint8 or tuple(w_q.shape) != (n * k // gs // 2, gs):
        raise BonsaiFormatError(file, name, f"W_q is {w_q.dtype} {list(w_q.shape)}, expected uint8 {[n * k // gs // 2, gs]}")
    if "zero_scale" in entry:  # offload_meta stores them stacked
        zs = entry["zero_scale"]
        if not isinstance(zs, (torch.Tensor, list, tuple)) or len(zs) != 2:
            raise BonsaiFormatError(file, name, "HQQ zero_scale must hold exactly [zero, scale]")
        zero, scale = zs[0], zs[1]
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
    config = read_config(folder)  # bounded before the archive is touched
    # mmap keeps the 2.7 GB file out of RAM until each tensor is repacked
    raw = load_archive(file, mmap=True)
    if not isinstance(raw, dict):
        raise BonsaiFormatError(file, None, f"expected a dict of module state dicts, got {type(raw).__name__}")
    # key prefix: Qwen3ForCausalLM names leaves "model.layers.N...", Qwen3Model "layers.N..."
    prefix = "" if any(str(k).startswith("model.layers.") for k in raw) else "model."
    # 1) what each entry declares (HQQ shape metadata, dense shapes), checked against config.json
    #    before any weight is read or repacked
    linears: list[tuple[str, dict[str, Any]]] = []
    dense: list[tuple[str, torch.Tensor]] = []
    lm_head = "absent"
    for module, entry in raw.items():
        if not isinstance(entry, dict):
            raise BonsaiFormatError(file, str(module)[:200], f"expected a module state dict, got {type(entry).__name__}")
        module = str(module)
        if module == "lm_head" or module.endswith(".lm_head"):
            # Qwen3-4B ties lm_head to the embedding; the text encoder never computes logits
            lm_head = "tied"
            continue
        name = prefix + module
        if "W_q" in entry:
            linears.append((name, entry))
            continue
        for k, v in entry.items():
            if not isinstance(v, torch.Tensor):
                raise BonsaiFormatError(file, f"{name}.{k}", f"expected a tensor, got {type(v).__name__}")
            dense.append((f"{name}.{k}", v))
    check_inventory(
        config, file, {name + ".weight": _hqq_shape(entry, file, name) for name, entry in linears}, {k: tuple(v.shape) for k, v in dense}
    )
    # 2) the data, one tensor at a time, values checked as read
    te = TEWeights(config=config, packed={}, dense={}, layout="hqq", path=folder, lm_head=lm_head)
    for name, entry in linears:
        te.packed[name + ".weight"] = check_te_values(_hqq_linear(entry, file, name), file, name + ".weight")
    for key, v in dense:
        # a copy, not a view: a view would keep the whole memory-mapped qmodel.pt alive
        te.dense[key] = check_dense_values(v.detach().clone(), file, key)
    check_complete(te, file)
    return te
