"""Unpacked repos: ``transformer/diffusion_pytorch_model.safetensors``, every tensor bf16 under its
diffusers name (same names and shapes as FLUX.2-klein-4B). The 100 block linears hold exactly
one magnitude per 128-group; :func:`bonsai_core.packing.quantize_exact` re-encodes them
losslessly, one layer at a time (the 7.75 GB file is never loaded whole).

Variant: ternary iff the first quantized linear holds a zero; every later layer is then packed
at that bit width, so a binary file with a stray zero, or any group with more than the allowed
values, is refused naming the tensor, row and group.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..bounded import read_shard_index
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE, bfl_quantized_layers, diffusers_quantized_linears
from ..packing import PackedWeight, check_dense_values, check_values, compact_scales, quantize_exact
from ..safetensors_io import _ST_TO_DTYPE, SafetensorsReader, TensorSpec, write_safetensors
from .affine import require_canonical
from .layout import (
    DiffusersView,
    LazyScaleDtypes,
    check_expected_variant,
    diffusers_to_bfl,
    guess_source_repo,
    load_transformer_config,
    validate_inventory,
    variant_for,
    write_json,
)

FOLDER = "transformer"
FILE = "diffusion_pytorch_model.safetensors"
INDEX = FILE + ".index.json"
FLOAT_ST = ("BF16", "F16", "F32")
MAX_SHARDS = 256  # the unpacked releases are one 7.75 GB file; diffusers shards at 5-10 GB


class _Shards:
    """One safetensors file, or the shards of a diffusers ``.index.json``, behind one lookup."""

    def __init__(self, path: Path, reader: SafetensorsReader | None = None) -> None:
        self.readers: dict[str, SafetensorsReader] = {}
        if path.name.endswith(".index.json"):
            wm = read_shard_index(path, MAX_SHARDS)
            opened: dict[str, SafetensorsReader] = {}
            for key, shard in wm.items():
                if shard not in opened:
                    opened[shard] = SafetensorsReader(path.parent / shard, mmap=False)
                if key not in opened[shard]:
                    raise BonsaiFormatError(path.parent / shard, key, "listed in the shard index but not in the shard")
                self.readers[key] = opened[shard]
            for shard, r in opened.items():  # exact key set: nothing in a shard the index places elsewhere
                for key in r.keys():
                    if wm.get(key) != shard:
                        placed = f"places it in {wm[key]}" if key in wm else "does not list it"
                        raise BonsaiFormatError(r.path, key, f"is in this shard but {path.name} {placed}")
            self.files = list(opened.values())
        else:
            r = reader if reader is not None else SafetensorsReader(path, mmap=False)
            self.readers = dict.fromkeys(r.keys(), r)
            self.files = [r]

    def keys(self) -> list[str]:
        return list(self.readers)

    def where(self, key: str) -> Path:
        return self.readers[key].path

    def get(self, key: str) -> torch.Tensor:
        return self.readers[key].get(key)


def unpacked_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    return p / INDEX if (p / INDEX).is_file() and not (p / FILE).is_file() else p / FILE


def read_unpacked(path: str | os.PathLike[str], variant: str | None = None, *, reader: SafetensorsReader | None = None) -> BonsaiCheckpoint:
    """Open an unpacked pack (folder, its safetensors file or shard index) lazily. ``reader``:
    the single file already opened by detection (it is not opened again)."""
    f = reader.path if reader is not None else unpacked_file(path)
    check_expected_variant(f, variant)
    sh = _Shards(f, reader)
    logical: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for key in sh.keys():
        r = sh.readers[key]
        if r.dtype_name(key) not in FLOAT_ST or len(r.shape(key)) > 2:
            raise BonsaiFormatError(
                r.path, key, f"expected a bf16/fp16/fp32 tensor, found {r.dtype_name(key)} (a packed file handed to the unpacked reader?)"
            )
        logical[key] = r.shape(key)
        dtypes[key] = _ST_TO_DTYPE[r.dtype_name(key)]
    cfg = load_transformer_config(f.parent / "config.json", logical)
    qlin = diffusers_quantized_linears(cfg)
    validate_inventory(f, cfg, logical, {f"{m}.weight" for m in qlin})

    first = next(iter(qlin))
    wkey = f"{first}.weight"
    _, _, bits = quantize_exact(sh.get(wkey), None, path=str(sh.where(wkey)), tensor=wkey)
    why = f"'{wkey}' {'holds' if bits == 2 else 'holds no'} zeros"
    found_variant = variant_for(sh.where(wkey), bits, variant, wkey, why)

    def load_module(mod: str) -> PackedWeight:
        key = f"{mod}.weight"
        return check_values(pack_rows(sh.get(key), bits, str(sh.where(key)), key), sh.where(key), key)

    def load_dense(key: str) -> torch.Tensor:
        return check_dense_values(sh.get(key), sh.where(key), key)

    def group_amax(mod: str) -> torch.Tensor:
        w = sh.get(f"{mod}.weight")
        n, k = w.shape
        return w.view(n, k // GROUP_SIZE, GROUP_SIZE).abs().amax(-1).float()  # amax is exact in any dtype

    qmap = bfl_quantized_layers(cfg)

    def scale_dtype(bk: str) -> torch.dtype:
        return compact_scales(torch.cat([group_amax(m) for m in qmap[bk]], 0)).dtype

    meta = BonsaiMeta(variant=found_variant, config=cfg, source_format="unpacked", source_repo=guess_source_repo(f.parent))
    return diffusers_to_bfl(
        f,
        meta,
        load_module,
        load_dense,
        dtypes,
        bytes_on_disk=sum(r.size for r in sh.files),
        scale_dtypes=LazyScaleDtypes(list(qmap), scale_dtype),
    )


CHUNK_ELEMENTS = 1 << 23  # quantize_exact's fp32 temporaries stay ~100 MB however large the layer


def pack_rows(w: torch.Tensor, bits: int, path: str, key: str) -> PackedWeight:
    """:func:`quantize_exact` over row blocks (rows are independent), so the working set is a
    fraction of the layer; errors report rows of the whole tensor."""
    n, k = w.shape
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    codes, scales = [], []
    for r0 in range(0, n, step):
        try:
            c, s, _ = quantize_exact(w[r0 : r0 + step], bits, path=path, tensor=key)
        except BonsaiFormatError as e:
            if r0 and e.reason.startswith("row "):
                row, rest = e.reason[4:].split(",", 1)
                raise BonsaiFormatError(path, key, f"row {int(row) + r0},{rest}") from None
            raise
        codes.append(c)
        scales.append(s.float())
    return PackedWeight(torch.cat(codes), compact_scales(torch.cat(scales)), bits)


def dense_bf16(path: Path, key: str, p: PackedWeight) -> torch.Tensor:
    """A packed layer as exact bf16 (refused when a scale is not a bf16 value, or the layer is affine)."""
    require_canonical(path, key, p, "unpacked (dense +-s per group)")
    s = p.scales.float()
    if not torch.equal(s.to(torch.bfloat16).float(), s):
        raise BonsaiFormatError(path, key, "scales are not representable in bf16, so a bf16 dense copy would not be exact")
    return p.dequantize(torch.bfloat16)  # exact: every product is +-s, 0


def write_unpacked(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str]) -> Path:
    """Export the released unpacked layout (dense bf16, diffusers names). ``out`` ending in
    ``.safetensors`` writes that file; otherwise it is a snapshot root (``transformer/`` inside)
    or a folder named ``transformer``."""
    out = Path(out)
    view = DiffusersView(ckpt)
    specs = [TensorSpec(k, dt, tuple(s), lambda k=k: view.dense_tensor(k)) for k, (dt, s) in view.dense.items()]
    specs += [
        TensorSpec(f"{m}.weight", torch.bfloat16, shape, lambda m=m: dense_bf16(out, f"{m}.weight", view.packed(m)))
        for m, shape in view.modules.items()
    ]
    if out.suffix == ".safetensors":
        write_safetensors(out, specs)
        return out
    target = out if out.name == FOLDER else out / FOLDER
    with atomic_path(target) as tmp:
        tmp.mkdir()
        write_safetensors(tmp / FILE, specs)
        write_json(tmp / "config.json", ckpt.meta.config.to_diffusers_config())
    return target
