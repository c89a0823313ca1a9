"""Binary GGUF files (community conversion): BFL key names, the block linears as ``Q1_0``.

``Q1_0`` (ggml type 41): blocks of 128 weights along K, 18 bytes each = fp16 ``d`` + 16 bytes of
sign bits, LSB-first (bit ``j % 8`` of byte ``j // 8``); bit 1 -> +d, bit 0 -> -d. That is
exactly the canonical binary code layout, so a Q1_0 row is the canonical codes of the row with
each group's 16 bytes preceded by its fp16 scale.

One community variant stores the ``*_modulation.lin`` layers as ``Q8_0``; those are dense layers
for Bonsai, so they are dequantized (exactly, to fp32) with the gguf package's own reference.
Other dense tensors are BF16/F16/F32 and kept as stored. Ternary has no Q1_0 form: a GGUF with
ternary tensor types is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import gguf
import numpy as np
import torch

from ..atomic import atomic_path
from ..bounded import open_regular
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import GROUP_SIZE, GeometryError, bfl_expected_shapes, infer_config_from_bfl_shapes
from ..packing import PackedWeight, check_dense_values, check_values, compact_scales
from .layout import check_expected_variant, variant_for

Q = gguf.GGMLQuantizationType
Q1_BLOCK_BYTES = 2 + GROUP_SIZE // 8  # fp16 d + 128 sign bits
DENSE_TYPES = {Q.BF16: torch.bfloat16, Q.F16: torch.float16, Q.F32: torch.float32, Q.Q8_0: torch.float32}
TERNARY_TYPES = {Q.TQ1_0, Q.TQ2_0} | ({Q.Q2_0} if hasattr(Q, "Q2_0") else set())
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
ARCH = "flux"  # what ComfyUI-GGUF's loader accepts for FLUX-family diffusion models


def _read_bytes(path: Path, t: gguf.ReaderTensor) -> np.ndarray:
    """A tensor's raw bytes by a positioned read (the reader's memmap would keep every touched
    page resident while converting)."""
    buf = np.empty(t.n_bytes, np.uint8)
    with open(path, "rb") as fh:
        fh.seek(t.data_offset)
        got = fh.readinto(buf)
    if got != t.n_bytes:
        raise BonsaiFormatError(path, t.name, f"read {got} of {t.n_bytes} bytes (truncated file?)")
    return buf


def read_gguf(path: str | os.PathLike[str], variant: str | None = None) -> BonsaiCheckpoint:
    f = Path(path)
    check_expected_variant(f, variant)
    open_regular(f).close()  # a FIFO or device is refused before the gguf package maps it
    try:
        reader = gguf.GGUFReader(f, "r")
    except Exception as e:  # the gguf package raises ValueError/struct.error/IndexError on bad files
        raise BonsaiFormatError(f, None, f"cannot read as GGUF (truncated or corrupt?): {e}") from e
    tensors: dict[str, gguf.ReaderTensor] = {}
    for t in reader.tensors:
        name = t.name
        for p in PREFIXES:
            if name.startswith(p):
                name = name[len(p) :]
        tensors[name] = t
    for name, t in tensors.items():
        if t.tensor_type in TERNARY_TYPES:
            raise BonsaiFormatError(
                f,
                name,
                f"{t.tensor_type.name} is a ternary GGUF type; only binary GGUF (Q1_0) is supported - use the ternary gemlite, MLX or unpacked release",
            )
    logical: dict[str, tuple[int, ...]] = {name: tuple(int(x) for x in reversed(t.shape.tolist())) for name, t in tensors.items()}
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
    for key in q_shapes:
        if tensors[key].tensor_type != Q.Q1_0:
            raise BonsaiFormatError(f, key, f"block linear stored as {tensors[key].tensor_type.name}; Bonsai GGUF stores it as Q1_0")
    for key in d_shapes:
        if tensors[key].tensor_type not in DENSE_TYPES:
            raise BonsaiFormatError(
                f, key, f"dense tensor type {tensors[key].tensor_type.name} is not one of {[t.name for t in DENSE_TYPES]}"
            )
    found_variant = variant_for(f, 1, variant, None, "GGUF Q1_0 is binary")

    def load_packed(key: str) -> PackedWeight:
        n, k = q_shapes[key]
        g = k // GROUP_SIZE
        raw = _read_bytes(f, tensors[key])
        if raw.size != n * g * Q1_BLOCK_BYTES:
            raise BonsaiFormatError(f, key, f"holds {raw.size} bytes, Q1_0 [{n}, {k}] needs {n * g * Q1_BLOCK_BYTES}")
        blocks = torch.from_numpy(raw).view(n, g, Q1_BLOCK_BYTES)
        d = blocks[..., :2].contiguous().view(torch.float16).view(n, g)
        codes = blocks[..., 2:].reshape(n, g * (GROUP_SIZE // 8))
        return check_values(PackedWeight(codes, compact_scales(d), 1), f, key)

    def load_dense(key: str) -> torch.Tensor:
        t = tensors[key]
        shape = d_shapes[key]
        raw_np = _read_bytes(f, t)
        if t.tensor_type == Q.Q8_0:
            if shape[-1] % 32 or raw_np.size * 32 != math.prod(shape) * 34:
                raise BonsaiFormatError(f, key, f"holds {raw_np.size} bytes, Q8_0 {list(shape)} needs {math.prod(shape) // 32 * 34}")
            rows = raw_np.reshape(-1, shape[-1] // 32 * 34)
            dense = torch.from_numpy(gguf.quants.dequantize(rows, Q.Q8_0).astype(np.float32)).reshape(shape)
        else:
            raw = torch.from_numpy(raw_np)
            esize = torch.empty((), dtype=DENSE_TYPES[t.tensor_type]).element_size()
            if raw.numel() != math.prod(shape) * esize:
                raise BonsaiFormatError(
                    f, key, f"holds {raw.numel()} bytes, {t.tensor_type.name} {list(shape)} needs {math.prod(shape) * esize}"
                )
            dense = raw.view(DENSE_TYPES[t.tensor_type]).reshape(shape)
        return check_dense_values(dense, f, key)

    meta = BonsaiMeta(variant=found_variant, config=cfg, source_format="gguf", source_repo=_field_str(reader, "general.source.repo_url"))
    return BonsaiCheckpoint(
        path=f,
        meta=meta,
        packed_shapes=q_shapes,
        dense_shapes={k: (DENSE_TYPES[tensors[k].tensor_type], tuple(s)) for k, s in d_shapes.items()},
        load_packed=load_packed,
        load_dense=load_dense,
        bytes_on_disk=f.stat().st_size,
        extra={"scale_dtypes": dict.fromkeys(q_shapes, torch.float16)},
    )


def _field_str(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return ""
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (UnicodeDecodeError, IndexError):
        return ""


def q1_0_blocks(path: Path, key: str, p: PackedWeight) -> np.ndarray:
    """Canonical binary codes + scales -> Q1_0 bytes [N, K/128 * 18]."""
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
