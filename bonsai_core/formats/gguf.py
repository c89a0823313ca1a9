"""GGUF files (community conversions): BFL key names, the block linears in a ggml block type.

Binary: ``Q1_0`` (ggml type 41): blocks of 128 weights along K, 18 bytes each = fp16 ``d`` + 16 bytes
of sign bits, LSB-first (bit ``j % 8`` of byte ``j // 8``); bit 1 -> +d, bit 0 -> -d. That is
exactly the canonical binary code layout, so a Q1_0 row is the canonical codes of the row with
each group's 16 bytes preceded by its fp16 scale.

Ternary: every public ternary block type is read exactly (``Q2_0`` in both of its layouts,
``PQ2_0``, ``PTQ1_0``, ``TQ1_0``, ``TQ2_0``; :mod:`.ggml_blocks`). Files that declare a Hadamard
rotation (``prism.hadamard.*``, PrismML's LLM releases) and other block types are refused naming
the type.

One community variant stores the ``*_modulation.lin`` layers as ``Q8_0``; those are dense layers
for Bonsai, so they are dequantized (exactly, to fp32) with the gguf package's own reference.
Other dense tensors are BF16/F16/F32 and kept as stored. The writer exports binary (Q1_0) only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np
import torch

from ..atomic import atomic_path
from ..bounded import open_regular, same_file_path
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE, GeometryError, bfl_expected_shapes, infer_config_from_bfl_shapes
from ..packing import PackedWeight, check_dense_values, check_values, compact_scales
from ..tensor_bounds import check_tensor
from . import ggml_blocks
from .affine import require_canonical
from .ggml_blocks import BlockLayout
from .gguf_index import TensorIndex, TensorInfo
from .layout import check_expected_variant, variant_for

Q = gguf.GGMLQuantizationType
Q1_BLOCK_BYTES = 2 + GROUP_SIZE // 8  # fp16 d + 128 sign bits
DENSE_TYPES = {Q.BF16: torch.bfloat16, Q.F16: torch.float16, Q.F32: torch.float32, Q.Q8_0: torch.float32}
DENSE_ESIZE = {Q.BF16: 2, Q.F16: 2, Q.F32: 4}
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
ARCH = "flux"  # what ComfyUI-GGUF's loader accepts for FLUX-family diffusion models
BLOCK_TYPES = "Q1_0 (binary) or Q2_0, PQ2_0, PTQ1_0, TQ1_0, TQ2_0 (ternary)"
USE_INSTEAD = "use the gemlite, MLX or unpacked release of the same variant"


class _OpenFile:
    """The one open GGUF file: its header was parsed from it and every tensor is read from it by
    positioned reads (the reader's memmap would keep every touched page resident while
    converting), so replacing the path while a model loads cannot mix two files or hang."""

    def __init__(self, path: Path, fh: BinaryIO) -> None:
        self.path, self.fh, self.lock = path, fh, threading.Lock()
        weakref.finalize(self, fh.close)  # closed with the last checkpoint that reads from it

    def read(self, t: TensorInfo) -> np.ndarray:
        buf = np.empty(t.n_bytes, np.uint8)
        with self.lock:
            self.fh.seek(t.data_offset)
            got = self.fh.readinto(buf)
        if got != t.n_bytes:
            raise BonsaiFormatError(self.path, t.name, f"read {got} of {t.n_bytes} bytes (truncated file?)")
        return buf


def _block_layouts(f: Path, reader: TensorIndex, tensors: dict[str, TensorInfo], packed: list[str]) -> dict[str, BlockLayout]:
    """The block layout of each packed tensor; type 42 (two layouts) decided from the bytes each
    such tensor occupies, one layout for the whole file."""
    layouts: dict[str, BlockLayout] = {}
    q2: dict[str, list[BlockLayout]] = {}
    for key in packed:
        t = tensors[key]
        if t.type_id == ggml_blocks.Q2_0:
            q2[key] = ggml_blocks.resolve_q2_0(t.n_elements, t.span, int(reader.alignment))
        elif t.type_id in ggml_blocks.BY_TYPE:
            layouts[key] = ggml_blocks.BY_TYPE[t.type_id]
        else:
            raise BonsaiFormatError(f, key, f"block linear stored as {t.type_name}; Bonsai GGUF block linears are {BLOCK_TYPES} - {USE_INSTEAD}")
    if q2:
        found = {lay.weights: lay for fits in q2.values() if len(fits) == 1 for lay in fits}
        if len(found) != 1:
            key = next(iter(q2))
            why = {
                0: "every one fits both (too small to tell)" if all(q2.values()) else "some fit neither (truncated?)",
                2: "some fit only 64-weight blocks, others only 128-weight blocks",
            }[len(found)]
            raise BonsaiFormatError(
                f, key, "cannot tell whether the type 42 (Q2_0) tensors use mainline's 64-weight/18-byte or PrismML's first "
                f"128-weight/34-byte blocks: {why}"
            )
        lay = next(iter(found.values()))
        for key, fits in q2.items():
            if lay not in fits:
                raise BonsaiFormatError(f, key, f"type 42 (Q2_0) tensor does not fit {lay.name} blocks like the rest of the file")
            layouts[key] = lay
    bits = {lay.bits for lay in layouts.values()}
    if len(bits) > 1:
        raise BonsaiFormatError(f, packed[0], "block linears mix binary (Q1_0) and ternary block types")
    return layouts


def read_gguf(path: str | os.PathLike[str], variant: str | None = None) -> BonsaiCheckpoint:
    f = Path(path)
    check_expected_variant(f, variant)
    fh = open_regular(f)  # a FIFO or device is refused before the gguf package maps anything
    try:
        return _read_open_gguf(f, _OpenFile(f, fh), variant)
    except BaseException:
        fh.close()
        raise


def _read_open_gguf(f: Path, opened: _OpenFile, variant: str | None) -> BonsaiCheckpoint:
    try:
        # the package maps the file already open (by its descriptor path), not whatever the name points to now
        reader = TensorIndex(same_file_path(opened.fh) or f)
    except Exception as e:  # the gguf package raises ValueError/struct.error/IndexError on bad files
        raise BonsaiFormatError(f, None, f"cannot read as GGUF (truncated or corrupt?): {e}") from e
    rotation = next((k for k in reader.fields if k.startswith("prism.hadamard.")), None)
    if rotation is not None:
        raise BonsaiFormatError(
            f, rotation, "weights are stored in a Hadamard-rotated basis (PrismML's LLM GGUFs); a Bonsai Image layer is not rotated - " + USE_INSTEAD
        )
    tensors: dict[str, TensorInfo] = {}
    for t in reader.tensor_infos:
        name = t.name
        for p in PREFIXES:
            if name.startswith(p):
                name = name[len(p) :]
        if name in tensors:  # one tensor under two name prefixes: never "the later one wins"
            raise BonsaiFormatError(f, t.name, f"names the same tensor as '{tensors[name].name}' (two copies of {name})")
        tensors[name] = t
    logical: dict[str, tuple[int, ...]] = {name: t.shape for name, t in tensors.items()}
    try:
        cfg = infer_config_from_bfl_shapes(logical)
    except GeometryError as e:
        hint = " (not a FLUX.2 Klein GGUF with BFL key names?)" if str(e) == "tensor is missing" else ""
        raise BonsaiFormatError(f, e.tensor, f"{e}{hint}") from e
    q_shapes, d_shapes = bfl_expected_shapes(cfg)
    for key, shape in {**q_shapes, **d_shapes}.items():
        if key not in tensors:
            raise BonsaiFormatError(f, key, "tensor is missing")
        if logical[key] != tuple(shape):
            raise BonsaiFormatError(f, key, f"shape {list(logical[key])} does not match the expected {list(shape)}")
    unknown = [k for k in tensors if k not in q_shapes and k not in d_shapes]
    if unknown:
        raise BonsaiFormatError(f, unknown[0], f"unexpected tensor ({len(unknown)} unexpected in all)")
    layouts = _block_layouts(f, reader, tensors, list(q_shapes))
    for key, lay in layouts.items():
        tensors[key].n_bytes = lay.tensor_nbytes(tensors[key].n_elements)
    for key in d_shapes:
        t = tensors[key]
        if t.type_id not in DENSE_TYPES:
            raise BonsaiFormatError(f, key, f"dense tensor type {t.type_name} is not one of {[t.name for t in DENSE_TYPES]}")
        t.n_bytes = t.n_elements // 32 * 34 if t.type_id == Q.Q8_0 else t.n_elements * DENSE_ESIZE[Q(t.type_id)]
    for key, t in tensors.items():
        if t.n_bytes > t.span:
            kind = f"{layouts[key].name} (type {t.type_id})" if key in layouts else t.type_name
            raise BonsaiFormatError(f, key, f"{kind} {list(t.shape)} needs {t.n_bytes} bytes, the file holds {t.span} (truncated?)")
    bits = next(iter(layouts.values())).bits
    found_variant = variant_for(f, bits, variant, None, f"GGUF {next(iter(layouts.values())).name}")

    def load_packed(key: str) -> PackedWeight:
        n, k = q_shapes[key]
        lay = layouts[key]
        if k % max(lay.weights, GROUP_SIZE):
            raise BonsaiFormatError(f, key, f"in_features {k} is not a multiple of the {lay.name} block ({lay.weights} weights)")
        raw = check_tensor(f, key, torch.from_numpy(opened.read(tensors[key])))
        try:
            codes, d = ggml_blocks.to_canonical(raw, lay, n, k)
        except ggml_blocks.GroupScaleMismatch as e:
            raise BonsaiFormatError(
                f, key, f"row {e.row}, group {e.group}: its two 64-weight Q2_0 blocks have scales {e.d0} and {e.d1}; "
                "a Bonsai layer has one scale per 128 weights (not a Bonsai conversion?)"
            ) from None
        return check_values(PackedWeight(codes, compact_scales(d), lay.bits), f, key)

    def load_dense(key: str) -> torch.Tensor:
        t = tensors[key]
        shape = d_shapes[key]
        raw_np = opened.read(t)
        check_tensor(f, key, torch.from_numpy(raw_np))  # the one rule every reader applies
        if t.type_id == Q.Q8_0:
            if shape[-1] % 32:
                raise BonsaiFormatError(f, key, f"Q8_0 {list(shape)}: the row length is not a multiple of 32")
            rows = raw_np.reshape(-1, shape[-1] // 32 * 34)
            dense = torch.from_numpy(gguf.quants.dequantize(rows, Q.Q8_0).astype(np.float32)).reshape(shape)
        else:
            dense = torch.from_numpy(raw_np).view(DENSE_TYPES[Q(t.type_id)]).reshape(shape)
        return check_dense_values(dense, f, key)

    meta = BonsaiMeta(variant=found_variant, config=cfg, source_format="gguf", source_repo=_field_str(reader, "general.source.repo_url"))
    return BonsaiCheckpoint(
        path=f,
        meta=meta,
        packed_shapes=q_shapes,
        dense_shapes={k: (DENSE_TYPES[Q(tensors[k].type_id)], tuple(s)) for k, s in d_shapes.items()},
        load_packed=load_packed,
        load_dense=load_dense,
        bytes_on_disk=os.fstat(opened.fh.fileno()).st_size,
        extra={"scale_dtypes": dict.fromkeys(q_shapes, torch.float16)},
    )


def _field_str(reader: TensorIndex, key: str) -> str:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return ""
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (UnicodeDecodeError, IndexError):
        return ""


def q1_0_blocks(path: Path, key: str, p: PackedWeight) -> np.ndarray:
    """Canonical binary codes + scales -> Q1_0 bytes [N, K/128 * 18]."""
    require_canonical(path, key, p, "GGUF Q1_0")
    n, k = p.shape
    g = k // GROUP_SIZE
    d = p.scales.to(torch.float16)
    if not torch.equal(d.float(), p.scales.float()):
        raise BonsaiFormatError(path, key, "scales are not representable in fp16, which Q1_0 stores")
    blocks = torch.cat([d.view(n, g, 1).view(torch.uint8), p.codes.view(n, g, GROUP_SIZE // 8)], dim=-1)
    return blocks.reshape(n, g * Q1_BLOCK_BYTES).numpy()


def write_gguf(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str], *, q8_modulation: bool = False) -> Path:
    """Export a binary checkpoint as a BFL-named GGUF (Q1_0 block linears), streaming, atomic.

    ``q8_modulation=True`` stores the ``*_modulation.lin`` layers as Q8_0 like one community file
    does (lossy: for testing the reader on that variant)."""
    out = Path(out)
    if ckpt.meta.bits != 1:
        raise BonsaiFormatError(out, None, f"GGUF Q1_0 holds binary weights only; this checkpoint is {ckpt.meta.variant}")
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # it logs its plan at INFO, with the temp name
    w = gguf.GGUFWriter(None, ARCH)
    w.add_name(f"Bonsai Image 4B {ckpt.meta.variant}")
    w.add_string("bonsai.variant", ckpt.meta.variant)
    w.add_string("bonsai.klein_config", json.dumps(ckpt.meta.config.as_dict(), sort_keys=True))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    plan: list[tuple[str, str]] = []  # (key, "dense" | "q8" | "q1")
    for key, (dtype, shape) in ckpt.dense_shapes.items():
        q8 = q8_modulation and key.endswith("_modulation.lin.weight")
        if q8:
            byte_shape = (*shape[:-1], shape[-1] // 32 * 34)
            w.add_tensor_info(key, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=Q.Q8_0)
        else:
            raw = {torch.bfloat16: Q.BF16, torch.float16: Q.F16, torch.float32: Q.F32}.get(dtype)
            if raw is None:
                raise BonsaiFormatError(out, key, f"dtype {dtype} has no GGUF type")
            esize = torch.empty((), dtype=dtype).element_size()
            byte_shape = (*shape[:-1], shape[-1] * esize)
            w.add_tensor_info(key, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=raw)
        plan.append((key, "q8" if q8 else "dense"))
    for key, (n, k) in ckpt.packed_shapes.items():
        byte_shape = (n, k // GROUP_SIZE * Q1_BLOCK_BYTES)
        w.add_tensor_info(key, byte_shape, np.dtype(np.uint8), n * byte_shape[1], raw_dtype=Q.Q1_0)
        plan.append((key, "q1"))
    with atomic_path(out) as tmp:
        w.open_output_file(tmp)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for key, kind in plan:
                if kind == "q1":
                    data = q1_0_blocks(out, key, ckpt.load_packed(key))
                elif kind == "q8":
                    data = gguf.quants.quantize(ckpt.load_dense(key).float().numpy(), Q.Q8_0)
                else:
                    data = ckpt.load_dense(key).contiguous().view(torch.uint8).numpy()
                w.write_tensor_data(data)
        finally:
            w.close()
    return out
