"""gemlite packs: ``transformer-gemlite-int{1,2}/state_dict.pt`` + ``config.json`` +
``quantization_config.json`` (gemlite 0.5.1; 0.6.x adds a per-layer ``meta_scale``, 0.0 for these layers).

Per quantized diffusers linear ``m``: ``m.W_q`` [K*bits/w, N] (w = packing width, 8 in the
releases: uint8) LSB-first along K, fp32 ``m.scales``/``m.zeros`` [K/128, N] with
``W = q * scales + zeros`` (W_group_mode 4), ``m.metadata`` int32[12], ``m.orig_shape`` int32
[N, K]. Bonsai stores binary as scales = 2s, zeros = -s and ternary as scales = s, zeros = -s,
so ``W_q.T`` viewed as bytes *is* the canonical code matrix and ``s = -zeros``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE, bfl_quantized_layers
from ..packing import PackedWeight, check_dense_values
from ..safetensors_io import SafetensorsReader
from ..torch_archive import load_archive
from .affine import AffineTally, packed_from_affine, scale_form
from .gemlite_meta import (  # noqa: F401  (PACK_DTYPES, MD_*: re-exported for callers that import them from here)
    DTYPE_FP16,
    DTYPE_FP32,
    MD_BITS,
    MD_CONTIGUOUS,
    MD_EPS,
    MD_GROUP,
    MD_GROUP_MODE,
    PACK_DTYPES,
    W_GROUP_MODE_FMA,
    check_layout,
    settings_from_json,
    settings_from_layers,
)
from .layout import (
    DiffusersView,
    LazyScaleDtypes,
    check_expected_variant,
    check_quantized_fqns,
    diffusers_to_bfl,
    guess_source_repo,
    load_transformer_config,
    quantization_config,
    read_json,
    release_pages,
    variant_for,
    write_json,
)

STATE_FILE = "state_dict.pt"
FOLDER_RE = re.compile(r"^transformer-gemlite-int(\d+)$")
LEAVES = ("W_q", "scales", "zeros", "metadata", "orig_shape", "meta_scale", "bias")
REQUIRED = ("W_q", "scales", "zeros", "metadata", "orig_shape")
# gemlite >= 0.6 stores a per-layer float32 ``meta_scale``; its kernels read it only for NVFP4
# (scaled activations / group 16), and GemLiteLinearTriton.pack() leaves it at the 0.0 its
# constructor registers for every other layer (checked against gemlite 0.6.0.post2). This pack's
# exporter wrote 1.0 before that was settled, so readers accept both.
META_SCALE = 0.0
NEUTRAL_META_SCALES = (0.0, 1.0)


def folder_name(bits: int) -> str:
    return f"transformer-gemlite-int{bits}"


def gemlite_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The pack's tensors, loaded with :func:`bonsai_core.torch_archive.load_archive`: the zip is
    checked first (stored entries only, no overlap, bounded pickle), then read with
    ``weights_only`` and memory-mapped, so a 1.5 GB pack costs no RAM until a layer is touched and
    a pickle that would run code is refused."""
    sd = load_archive(path, mmap=True)
    if not isinstance(sd, dict):
        raise BonsaiFormatError(path, None, f"expected a state dict, found {type(sd).__name__}")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise BonsaiFormatError(path, str(k), f"expected a tensor, found {type(v).__name__}")
    return sd


def gemlite_tensors(path: Path, reader: SafetensorsReader | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a gemlite pack: a torch archive (``state_dict.pt``, memory-mapped) or a
    safetensors file holding the same leaves (as diffusers' GemLite quantizer saves them)."""
    if path.suffix != ".safetensors":
        return load_state_dict(path)
    r = reader if reader is not None else SafetensorsReader(path, mmap=True)
    return {k: r.get(k) for k in r.keys()}


def read_gemlite(
    path: str | os.PathLike[str], variant: str | None = None, *, reader: SafetensorsReader | None = None
) -> BonsaiCheckpoint:
    """Open a gemlite pack lazily, validating every layer's layout: a pack folder, its
    ``state_dict.pt`` (or a copy of it under any name, with or without the JSON side files), or a
    safetensors file of gemlite leaves. Without ``quantization_config.json`` the bits and packing
    width come from the layers' own ``metadata`` and ``W_q`` (see :mod:`.gemlite_meta`)."""
    p = reader.path if reader is not None else Path(path)
    d = gemlite_dir(p)
    check_expected_variant(d, variant)
    sd_path = p if p.is_file() else d / STATE_FILE
    q_path = d / "quantization_config.json"
    qcfg = read_json(q_path, required=False)

    sd = gemlite_tensors(sd_path, reader)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    dense: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if leaf in LEAVES and prefix:
            modules.setdefault(prefix, {})[leaf] = v
        else:
            dense[k] = v
    if qcfg is not None:
        bits, pbw = settings_from_json(q_path, qcfg, d, FOLDER_RE)
    else:
        bits, pbw = settings_from_layers(sd_path, modules, q_path)
    found_variant = variant_for(q_path if qcfg is not None else sd_path, bits, variant)
    logical: dict[str, tuple[int, ...]] = {k: tuple(v.shape) for k, v in dense.items()}
    for mod, parts in modules.items():
        for leaf in REQUIRED:
            if leaf not in parts:
                raise BonsaiFormatError(sd_path, f"{mod}.{leaf}", "tensor is missing")
        if "bias" in parts:
            raise BonsaiFormatError(sd_path, f"{mod}.bias", "Bonsai linears have no bias")
        shape = parts["orig_shape"]
        if shape.numel() != 2 or shape.is_floating_point() or shape.is_complex() or shape.dtype == torch.bool or bool((shape <= 0).any()):
            raise BonsaiFormatError(
                sd_path, f"{mod}.orig_shape", f"expected two positive integers [out, in], found {shape.dtype} {str(shape.tolist())[:80]}"
            )
        logical[f"{mod}.weight"] = tuple(int(x) for x in shape.tolist())
    for k, v in dense.items():
        if not v.is_floating_point():
            raise BonsaiFormatError(sd_path, k, f"dense tensor has dtype {v.dtype}")
    cfg = load_transformer_config(d / "config.json", logical)
    from .layout import validate_inventory

    validate_inventory(sd_path, cfg, logical, {f"{mod}.weight" for mod in modules})
    if qcfg is not None:
        check_quantized_fqns(q_path, qcfg, cfg)
    for mod, parts in modules.items():
        check_layout(sd_path, mod, parts, bits, pbw)

    tally = AffineTally(sd_path, len(modules))

    def load_module(mod: str) -> PackedWeight:
        out = packed_from_gemlite(sd_path, mod, modules[mod], bits, tally)  # copies out of the mmap
        release_pages(*modules[mod].values())
        return out

    def load_dense(key: str) -> torch.Tensor:
        t = dense[key].clone()
        release_pages(dense[key])
        return check_dense_values(t, sd_path, key)

    qmap = bfl_quantized_layers(cfg)

    def scale_dtype(bk: str) -> tuple[torch.dtype, bool]:
        form = scale_form([(modules[m]["scales"].t(), modules[m]["zeros"].t()) for m in qmap[bk]], bits)
        release_pages(*(modules[m][leaf] for m in qmap[bk] for leaf in ("scales", "zeros")))
        return form

    meta = BonsaiMeta(variant=found_variant, config=cfg, source_format="gemlite", source_repo=guess_source_repo(d))
    return diffusers_to_bfl(
        sd_path,
        meta,
        load_module,
        load_dense,
        {k: v.dtype for k, v in dense.items()},
        bytes_on_disk=sd_path.stat().st_size,
        scale_dtypes=LazyScaleDtypes(list(qmap), scale_dtype),
    )


def packed_from_gemlite(path: Path, mod: str, p: dict[str, torch.Tensor], bits: int, tally: AffineTally | None = None) -> PackedWeight:
    """One gemlite layer (its leaf tensors) as a :class:`PackedWeight` (canonical where the Bonsai
    relation holds in every group, the file's own scale/zero otherwise)."""
    if "meta_scale" in p:
        ms = p["meta_scale"]
        if not ms.is_floating_point() or ms.numel() != 1 or float(ms.float().reshape(())) not in NEUTRAL_META_SCALES:
            raise BonsaiFormatError(
                path,
                f"{mod}.meta_scale",
                "is not neutral (gemlite writes 0.0 for 1/2-bit integer layers; 1.0 from older exports of this pack): "
                "a scaled (NVFP4-style) gemlite layer is not a Bonsai layout",
            )
    # W_q [K*bits/w, N] of w-bit words: transposed, each row's words viewed as bytes are LSB-first along K
    codes = p["W_q"].t().contiguous().view(torch.uint8)
    return packed_from_affine(path, mod, codes, p["scales"].t(), p["zeros"].t(), bits, ("W_q", "scales", "zeros"), tally)


def gemlite_layer(p: PackedWeight, *, gemlite_version: str = "0.5") -> dict[str, torch.Tensor]:
    """The leaf tensors gemlite's ``GemLiteLinearTriton.pack`` (packing_bitwidth 8, fma mode) stores."""
    bits = p.bits
    scale, zero = p.affine(torch.float32)  # fp32 [N, K/128], stored transposed
    out = {
        "W_q": p.codes.t().contiguous(),
        "scales": scale.t().contiguous(),
        "zeros": zero.t().contiguous(),
        "metadata": torch.tensor(
            [0, bits, GROUP_SIZE, (1 << bits) - 1, 8 // bits, DTYPE_FP16, DTYPE_FP16, DTYPE_FP32, DTYPE_FP32, 0, W_GROUP_MODE_FMA, 1],
            dtype=torch.int32,
        ),
        "orig_shape": torch.tensor(list(p.shape), dtype=torch.int32),
    }
    if gemlite_version.startswith("0.6"):
        out["meta_scale"] = torch.tensor(META_SCALE, dtype=torch.float32)
    return out


def write_gemlite(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str], *, gemlite_version: str = "0.5") -> Path:
    """Export the released gemlite layout. ``out`` is a snapshot root (the pack goes into
    ``transformer-gemlite-int{bits}/``) or a folder named like that pack. Atomic.

    ``gemlite_version="0.6"`` adds the neutral per-layer ``meta_scale`` gemlite 0.6 writes."""
    out = Path(out)
    bits = ckpt.meta.bits
    sub = None if FOLDER_RE.match(out.name) else folder_name(bits)
    view = DiffusersView(ckpt)
    sd: dict[str, torch.Tensor] = {}
    for key in view.dense:
        sd[key] = view.dense_tensor(key).clone()  # clone: never pickle a view of a whole mmap
    for mod in view.modules:
        for leaf, t in gemlite_layer(view.packed(mod), gemlite_version=gemlite_version).items():
            sd[f"{mod}.{leaf}"] = t
    fmt = "gemlite-int2-ternary-g128" if bits == 2 else "gemlite-int1-g128"
    qcfg = quantization_config(fmt, bits, ckpt.meta.config, packing_bitwidth=8, input_dtype="float16", output_dtype="float16")
    target = out / sub if sub else out  # only the pack folder is replaced, never the snapshot root
    with atomic_path(target) as tmp:
        tmp.mkdir()
        torch.save(sd, tmp / STATE_FILE)
        write_json(tmp / "config.json", ckpt.meta.config.to_diffusers_config())
        write_json(tmp / "quantization_config.json", qcfg)
    return target
