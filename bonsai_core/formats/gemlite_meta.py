"""gemlite's per-layer ``metadata`` and what a pack's settings (bits, packing width) are, from its
``quantization_config.json`` or, for a loose ``state_dict.pt`` (or a gemlite safetensors file) without
its JSON files, from the layers themselves: ``metadata[1]`` bits, ``[2]`` group size, ``[4]`` elements
per packed word, the ``W_q`` dtype (packing width) and ``orig_shape``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE
from .layout import quant_json_bits

# element width of W_q in bits -> its dtype (gemlite set_packing_bitwidth)
PACK_DTYPES = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}
PACK_BITS = {v: k for k, v in PACK_DTYPES.items()}
W_GROUP_MODE_FMA = 4  # W = q * scale + zero
# metadata slots (gemlite 0.5.1 GemLiteLinearTriton.pack; unchanged in 0.6)
MD_BITS, MD_GROUP, MD_MASK, MD_EPS, MD_GROUP_MODE, MD_CONTIGUOUS = 1, 2, 3, 4, 10, 11
DTYPE_FP32, DTYPE_FP16 = 0, 1


def settings_from_json(q_path: Path, qcfg: dict, folder: Path, folder_re: object) -> tuple[int, int]:
    """(bits, packing width) of a ``quantization_config.json``, checked against the folder name."""
    bits = quant_json_bits(q_path, qcfg)
    m = folder_re.match(folder.name)  # type: ignore[attr-defined]
    if m and int(m.group(1)) != bits:
        raise BonsaiFormatError(q_path, None, f"says bits={bits} but the folder is named {folder.name}")
    try:
        pbw = int(qcfg.get("packing_bitwidth", 8))  # the reference loader's default
    except (TypeError, ValueError) as e:
        raise BonsaiFormatError(q_path, None, f"invalid packing_bitwidth: {e}") from e
    if pbw not in PACK_DTYPES:
        raise BonsaiFormatError(q_path, None, f"packing_bitwidth {pbw} is not one of {sorted(PACK_DTYPES)}")
    return bits, pbw


def settings_from_layers(path: str | os.PathLike[str], modules: dict[str, dict[str, torch.Tensor]], q_path: Path) -> tuple[int, int]:
    """(bits, packing width) read off the layers when ``quantization_config.json`` is absent: every
    layer's ``metadata[1]`` (bits) must agree and its ``W_q`` dtype gives the packing width. When a
    layer cannot say (no or unreadable ``metadata``), one line names the missing JSON file."""
    if not modules:
        raise BonsaiFormatError(path, None, "holds no gemlite layer (no '.W_q' tensors)")
    found: dict[tuple[int, int], str] = {}
    for mod, parts in modules.items():
        md, wq = parts.get("metadata"), parts.get("W_q")
        if md is None or wq is None or md.ndim != 1 or md.numel() <= MD_EPS or md.is_floating_point() or wq.dtype not in PACK_BITS:
            raise BonsaiFormatError(
                q_path,
                None,
                f"is missing, and layer {mod} does not carry readable gemlite metadata to replace it; "
                "put the pack's quantization_config.json next to its state_dict.pt",
            )
        found.setdefault((int(md[MD_BITS]), PACK_BITS[wq.dtype]), mod)
    if len(found) > 1:
        (a, ma), (b, mb) = list(found.items())[:2]
        raise BonsaiFormatError(path, f"{mb}.metadata", f"layers disagree: {ma} is {a[0]}-bit in {a[1]}-bit words, {mb} {b[0]}-bit in {b[1]}")
    return next(iter(found))


def check_layout(path: Path, mod: str, p: dict[str, torch.Tensor], bits: int, pbw: int) -> None:
    """Shapes, dtypes and metadata of one layer (cheap: no weight data is read). ``W_q`` may be a
    non-contiguous view (gemlite's ``data_contiguous`` 0): only its logical shape matters."""
    n, k = (int(x) for x in p["orig_shape"].tolist())
    g = k // GROUP_SIZE
    wq = p["W_q"]
    if wq.dtype != PACK_DTYPES[pbw]:
        raise BonsaiFormatError(path, f"{mod}.W_q", f"dtype {wq.dtype} does not match packing_bitwidth {pbw} ({PACK_DTYPES[pbw]})")
    if k % GROUP_SIZE or tuple(wq.shape) != (k * bits // pbw, n):
        raise BonsaiFormatError(
            path, f"{mod}.W_q", f"shape {list(wq.shape)} does not match [{k} * {bits} / {pbw}, {n}] (wrong bits or variant?)"
        )
    for leaf in ("scales", "zeros"):
        t = p[leaf]
        if not t.is_floating_point() or tuple(t.shape) != (g, n):
            raise BonsaiFormatError(
                path, f"{mod}.{leaf}", f"{t.dtype} {list(t.shape)}, expected float [{g}, {n}] (one per 128-group: mixed group sizes?)"
            )
    md = p["metadata"]
    if md.dtype not in (torch.int32, torch.int64) or md.ndim != 1 or md.numel() < 11:
        raise BonsaiFormatError(path, f"{mod}.metadata", f"expected int32[12], found {md.dtype} {list(md.shape)}")
    mdl = md.tolist()
    checks = (
        (MD_BITS, bits, "bits"),
        (MD_GROUP, GROUP_SIZE, "group size (mixed group sizes?)"),
        (MD_EPS, pbw // bits, "elements per packed sample"),
        (MD_GROUP_MODE, W_GROUP_MODE_FMA, "W_group_mode (Bonsai uses 4: W = q * scale + zero)"),
    )
    for idx, want, what in checks:
        if mdl[idx] != want:
            raise BonsaiFormatError(path, f"{mod}.metadata", f"[{idx}] {what} is {mdl[idx]}, expected {want}")
