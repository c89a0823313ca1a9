"""MLX packs: ``transformer-packed-mflux/diffusion_pytorch_model.safetensors`` (+ ``config.json``,
``quantization_config.json``), one diffusers-named file written by PrismML's mflux fork.

A linear is packed iff ``<m>.scales`` exists: ``<m>.weight`` uint32 [N, K*bits/32] (LSB-first,
little-endian), ``<m>.scales`` / ``<m>.biases`` bf16 [N, K/128], ``W = scales * q + biases``.
Bonsai: binary scales = 2s, biases = -s; ternary scales = s, biases = -s. The uint32 words viewed
as bytes are exactly the canonical code matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE, bfl_quantized_layers
from ..packing import PackedWeight, check_dense_values
from ..safetensors_io import SafetensorsReader, TensorSpec, write_safetensors
from .affine import AffineTally, packed_from_affine, scale_form
from .layout import (
    DiffusersView,
    LazyScaleDtypes,
    check_expected_variant,
    check_quantized_fqns,
    diffusers_to_bfl,
    guess_source_repo,
    load_transformer_config,
    quant_json_bits,
    quantization_config,
    read_json,
    validate_inventory,
    variant_for,
    write_json,
)

FOLDER = "transformer-packed-mflux"
FILE = "diffusion_pytorch_model.safetensors"
FLOAT_ST = ("BF16", "F16", "F32")


def mlx_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.is_file() else p / FILE


def read_mlx(path: str | os.PathLike[str], variant: str | None = None, *, reader: SafetensorsReader | None = None) -> BonsaiCheckpoint:
    """Open an MLX pack (folder or its safetensors file) lazily. ``quantization_config.json`` is
    cross-checked when present; bits are otherwise read off the packed shapes. ``reader``: the
    file already opened by detection (it is not opened again)."""
    f = reader.path if reader is not None else mlx_file(path)
    check_expected_variant(f, variant)
    r = reader if reader is not None else SafetensorsReader(f, mmap=False)
    q_path = f.parent / "quantization_config.json"
    qcfg = read_json(q_path, required=False)

    logical: dict[str, tuple[int, ...]] = {}
    packed: dict[str, int] = {}  # module -> bits implied by its shapes
    keys = set(r.keys())
    for key in r.keys():
        if key.endswith(".scales"):
            mod = key[: -len(".scales")]
            for leaf in ("weight", "biases"):
                if f"{mod}.{leaf}" not in keys:
                    raise BonsaiFormatError(f, f"{mod}.{leaf}", "tensor is missing (packed layer has .scales)")
            w, sc, bi = f"{mod}.weight", key, f"{mod}.biases"
            if r.dtype_name(w) != "U32":
                raise BonsaiFormatError(f, w, f"packed weight must be U32, found {r.dtype_name(w)}")
            for t in (sc, bi):
                if r.dtype_name(t) not in FLOAT_ST or len(r.shape(t)) != 2:
                    raise BonsaiFormatError(f, t, f"expected a 2-D float tensor, found {r.dtype_name(t)} {list(r.shape(t))}")
            if len(r.shape(w)) != 2:
                raise BonsaiFormatError(f, w, f"packed weight must be 2-D, found {list(r.shape(w))}")
            n, g = r.shape(sc)
            if r.shape(bi) != (n, g):
                raise BonsaiFormatError(f, bi, f"shape {list(r.shape(bi))} differs from scales {[n, g]}")
            wn, words = r.shape(w)
            k = g * GROUP_SIZE
            if wn != n or k == 0 or (words * 32) % k:
                raise BonsaiFormatError(f, w, f"shape {[wn, words]} does not match scales {[n, g]} (mixed group sizes?)")
            packed[mod] = words * 32 // k
            logical[w] = (n, k)
        elif key.endswith(".biases"):
            if key[: -len(".biases")] + ".scales" not in keys:
                raise BonsaiFormatError(f, key[: -len(".biases")] + ".scales", "tensor is missing (packed layer has .biases)")
        elif f"{key.rpartition('.')[0]}.scales" not in keys:
            if r.dtype_name(key) not in FLOAT_ST:
                raise BonsaiFormatError(f, key, f"dense tensor has dtype {r.dtype_name(key)}")
            logical[key] = r.shape(key)
    found_bits = sorted(set(packed.values()))
    if len(found_bits) > 1:
        odd = next(m for m, b in packed.items() if b != packed[next(iter(packed))])
        raise BonsaiFormatError(f, f"{odd}.weight", f"layers disagree on bits {found_bits}")
    if qcfg is not None:
        bits = quant_json_bits(q_path, qcfg)
        if found_bits and found_bits[0] != bits:
            mod = next(iter(packed))
            raise BonsaiFormatError(f, f"{mod}.weight", f"shape implies {found_bits[0]}-bit, quantization_config.json says {bits}")
    elif found_bits:
        bits = found_bits[0]
    else:
        raise BonsaiFormatError(f, None, "no packed layer (no '.scales' tensors) and no quantization_config.json: not an MLX pack")
    found_variant = variant_for(f, bits, variant)
    cfg = load_transformer_config(f.parent / "config.json", logical)
    validate_inventory(f, cfg, logical, {f"{m}.weight" for m in packed})
    if qcfg is not None:
        check_quantized_fqns(q_path, qcfg, cfg)

    tally = AffineTally(f, len(packed))

    def load_module(mod: str) -> PackedWeight:
        return packed_from_mlx(f, mod, r.get(f"{mod}.weight"), r.get(f"{mod}.scales"), r.get(f"{mod}.biases"), bits, tally)

    qmap = bfl_quantized_layers(cfg)

    def scale_dtype(bk: str) -> tuple[torch.dtype, bool]:
        return scale_form([(r.get(f"{m}.scales"), r.get(f"{m}.biases")) for m in qmap[bk]], bits)

    meta = BonsaiMeta(variant=found_variant, config=cfg, source_format="mlx", source_repo=guess_source_repo(f.parent))
    dense_keys = [k for k in logical if k.rpartition(".")[0] not in packed]
    return diffusers_to_bfl(
        f,
        meta,
        load_module,
        lambda key: check_dense_values(r.get(key), f, key),
        {k: _st_dtype(r.dtype_name(k)) for k in dense_keys},
        bytes_on_disk=r.size,
        scale_dtypes=LazyScaleDtypes(list(qmap), scale_dtype),
    )


def packed_from_mlx(
    path: Path, mod: str, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, tally: AffineTally | None = None
) -> PackedWeight:
    """One MLX layer as a :class:`PackedWeight` (canonical where the Bonsai relation holds in every
    group, the file's own scales/biases otherwise)."""
    codes = weight.contiguous().view(torch.uint8)  # little-endian uint32 words -> LSB-first bytes along K
    return packed_from_affine(path, mod, codes, scales, biases, bits, ("weight", "scales", "biases"), tally)


def mlx_layer(p: PackedWeight, path: Path | str = "?", mod: str = "?") -> dict[str, torch.Tensor]:
    """``weight`` uint32 [N, K*bits/32], ``scales``/``biases`` bf16 [N, K/128] (what ``mx.quantize`` stores)."""
    scale, bias = p.affine(torch.float32)
    return {
        "weight": p.codes.contiguous().view(torch.uint32),
        "scales": _bf16_exact(path, f"{mod}.scales", scale),
        "biases": _bf16_exact(path, f"{mod}.biases", bias),
    }


def _st_dtype(name: str) -> torch.dtype:
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[name]


def _bf16_exact(path: Path, key: str, t: torch.Tensor) -> torch.Tensor:
    b = t.to(torch.bfloat16)
    if not torch.equal(b.float(), t.float()):
        raise BonsaiFormatError(path, key, "scales are not representable in bf16, which the MLX layout stores; export to canonical instead")
    return b


def write_mlx(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str]) -> Path:
    """Export the released MLX layout. ``out`` ending in ``.safetensors`` writes that one file;
    otherwise ``out`` is a snapshot root (pack in ``transformer-packed-mflux/``) or that folder."""
    out = Path(out)
    bits = ckpt.meta.bits
    view = DiffusersView(ckpt)
    specs: list[TensorSpec] = []
    for key, (dtype, shape) in view.dense.items():
        specs.append(TensorSpec(key, dtype, tuple(shape), lambda k=key: view.dense_tensor(k)))
    for mod, (n, k) in view.modules.items():
        g = k // GROUP_SIZE
        shapes = {"weight": (torch.uint32, (n, k * bits // 32)), "scales": (torch.bfloat16, (n, g)), "biases": (torch.bfloat16, (n, g))}
        for leaf, (dt, shape) in shapes.items():
            specs.append(TensorSpec(f"{mod}.{leaf}", dt, shape, lambda m=mod, leaf=leaf: mlx_layer(view.packed(m), out, m)[leaf]))
    md = {"format": "mlx"}
    if out.suffix == ".safetensors":
        write_safetensors(out, specs, md)
        return out
    target = out if out.name == FOLDER else out / FOLDER
    with atomic_path(target) as tmp:
        tmp.mkdir()
        write_safetensors(tmp / FILE, specs, md)
        write_json(tmp / "config.json", ckpt.meta.config.to_diffusers_config())
        write_json(
            tmp / "quantization_config.json", quantization_config("mlx-packed-affine", bits, ckpt.meta.config, scale_dtype="bfloat16")
        )
    return target
