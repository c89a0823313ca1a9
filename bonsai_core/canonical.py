"""The canonical single-file format (docs/FORMAT.md): BFL keys, packed codes + scales, dense rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import FORMAT_VERSION, BonsaiCheckpoint, BonsaiMeta
from .errors import BonsaiFormatError
from .klein import GROUP_SIZE, KleinConfig, bfl_dense_tensors, bfl_quantized_layers
from .packing import PackedWeight
from .safetensors_io import _ST_TO_DTYPE, SafetensorsReader, TensorSpec, write_safetensors

SCALE_SUFFIX = "_scale"  # "<layer>.weight" (uint8 codes) + "<layer>.weight_scale"
CANONICAL_MARKER = "bonsai-canonical"


def scale_key(weight_key: str) -> str:
    return weight_key + SCALE_SUFFIX


def is_canonical(path: str | os.PathLike[str]) -> bool:
    """True for a safetensors file carrying canonical Bonsai metadata (cheap: reads the header only)."""
    try:
        reader_meta = SafetensorsReader(path).metadata
    except BonsaiFormatError:
        return False
    return reader_meta.get("bonsai_format") == CANONICAL_MARKER


def canonical_specs(ckpt: BonsaiCheckpoint) -> list[TensorSpec]:
    """The tensors of a canonical file for ``ckpt``, each produced on demand."""
    specs: list[TensorSpec] = []
    for key, (dtype, shape) in ckpt.dense_shapes.items():
        specs.append(TensorSpec(key, dtype, tuple(shape), lambda k=key: ckpt.load_dense(k)))
    bits = ckpt.meta.bits
    cache: dict[str, PackedWeight] = {}

    def packed(k: str) -> PackedWeight:
        # codes and scales are written back to back: load once, hand out both halves
        if k not in cache:
            cache.clear()
            cache[k] = ckpt.load_packed(k)
        return cache[k]

    for key, (n, k_in) in ckpt.packed_shapes.items():
        scale_dtype = ckpt.extra.get("scale_dtypes", {}).get(key)  # type: ignore[union-attr]
        if scale_dtype is None:
            scale_dtype = packed(key).scales.dtype
        specs.append(TensorSpec(key, torch.uint8, (n, k_in * bits // 8), lambda k=key: packed(k).codes))
        specs.append(TensorSpec(scale_key(key), scale_dtype, (n, k_in // GROUP_SIZE), lambda k=key: packed(k).scales))
    return specs


def save_canonical(ckpt: BonsaiCheckpoint, path: str | os.PathLike[str]) -> int:
    """Write ``ckpt`` as one canonical ``.safetensors`` (atomic). Returns bytes written."""
    return write_safetensors(path, canonical_specs(ckpt), ckpt.meta.to_metadata())


def load_canonical(path: str | os.PathLike[str]) -> BonsaiCheckpoint:
    """Open a canonical file lazily, validating metadata, key set and every shape."""
    path = Path(path)
    r = SafetensorsReader(path)
    md = r.metadata
    if md.get("bonsai_format") != CANONICAL_MARKER:
        raise BonsaiFormatError(path, None, "not a canonical Bonsai file (no 'bonsai_format' metadata)")
    try:
        version = int(md["bonsai_format_version"])
        cfg = KleinConfig(**json.loads(md["klein_config"]))
        meta = BonsaiMeta(
            variant=md["variant"],
            config=cfg,
            source_format=md.get("source_format", "canonical"),
            source_repo=md.get("source_repo", ""),
            source_sha256=md.get("source_sha256", ""),
            group_size=int(md.get("group_size", GROUP_SIZE)),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise BonsaiFormatError(path, None, f"invalid canonical metadata: {e}") from e
    if version > FORMAT_VERSION:
        raise BonsaiFormatError(path, None, f"format version {version} is newer than this reader ({FORMAT_VERSION}); update the node pack")
    if int(md.get("bits", meta.bits)) != meta.bits:
        raise BonsaiFormatError(path, None, f"metadata says bits={md.get('bits')} but variant {meta.variant} has {meta.bits}")

    bits = meta.bits
    packed_shapes: dict[str, tuple[int, int]] = {}
    expected_q = bfl_quantized_layers(cfg)
    expected_d = bfl_dense_tensors(cfg)
    for key in expected_q:
        sk = scale_key(key)
        for k in (key, sk):
            if k not in r:
                raise BonsaiFormatError(path, k, "tensor is missing")
        if r.dtype_name(key) != "U8":
            raise BonsaiFormatError(path, key, f"packed codes must be U8, found {r.dtype_name(key)}")
        if r.dtype_name(sk) not in ("F16", "BF16", "F32"):
            raise BonsaiFormatError(path, sk, f"scales must be F16/BF16/F32, found {r.dtype_name(sk)}")
        n, kb = r.shape(key)
        ns, g = r.shape(sk)
        k_in = kb * 8 // bits
        if ns != n or g * GROUP_SIZE != k_in:
            raise BonsaiFormatError(path, key, f"codes {[n, kb]} at {bits} bit do not match scales {[ns, g]} (mixed group size or wrong variant?)")
        packed_shapes[key] = (n, k_in)
    dense_shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for key in expected_d:
        if key not in r:
            raise BonsaiFormatError(path, key, "tensor is missing")
        dense_shapes[key] = (_ST_TO_DTYPE[r.dtype_name(key)], r.shape(key))
    known = set(expected_d) | set(expected_q) | {scale_key(k) for k in expected_q}
    unknown = [k for k in r.keys() if k not in known]
    if unknown:
        raise BonsaiFormatError(path, unknown[0], f"unexpected tensor ({len(unknown)} unexpected in all)")

    def load_packed(key: str) -> PackedWeight:
        try:
            return PackedWeight(r.get(key), r.get(scale_key(key)), bits)
        except ValueError as e:
            raise BonsaiFormatError(path, key, str(e)) from e

    return BonsaiCheckpoint(
        path=path,
        meta=meta,
        packed_shapes=packed_shapes,
        dense_shapes=dense_shapes,
        load_packed=load_packed,
        load_dense=r.get,
        bytes_on_disk=path.stat().st_size,
        extra={"scale_dtypes": {k: _ST_TO_DTYPE[r.dtype_name(scale_key(k))] for k in packed_shapes}},
    )
