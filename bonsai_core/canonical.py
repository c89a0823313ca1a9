"""The canonical single-file format (docs/FORMAT.md): BFL keys, packed codes + scales, dense rest."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .bounded import loads_strict
from .checkpoint import CANONICAL_MARKER, BonsaiCheckpoint, BonsaiMeta
from .errors import BonsaiFormatError
from .klein import GROUP_SIZE, GeometryError, KleinConfig, bfl_expected_shapes
from .packing import PackedWeight, check_dense_values, check_values
from .safetensors_io import _ST_TO_DTYPE, SafetensorsReader, TensorSpec, read_header, write_safetensors

# A quantized layer "<module>.weight" (uint8 codes) has its scales under "<module>.weight_scale";
# an affine layer (PackedWeight.zeros) also has "<module>.weight_zero", and then weight_scale is the
# per-group multiplier of the code (W = q * weight_scale + weight_zero) instead of s.
SCALE_LEAF = "weight_scale"
ZERO_LEAF = "weight_zero"
# Files without affine layers are written as version 1 (unchanged); with one, as version 2, so a
# reader from before affine layers existed refuses them with "update the node pack".
AFFINE_FORMAT_VERSION = 2
__all__ = [
    "CANONICAL_MARKER", "SCALE_LEAF", "ZERO_LEAF", "is_canonical", "load_canonical", "read_canonical", "save_canonical", "scale_key",
    "zero_key",
]  # fmt: skip


def scale_key(weight_key: str) -> str:
    """``double_blocks.0.img_attn.qkv.weight`` -> ``double_blocks.0.img_attn.qkv.weight_scale``."""
    module, dot, leaf = weight_key.rpartition(".")
    if leaf != "weight" or not dot:
        raise ValueError(f"{weight_key!r} is not a '<module>.weight' key")
    return f"{module}.{SCALE_LEAF}"


def zero_key(weight_key: str) -> str:
    """``...qkv.weight`` -> ``...qkv.weight_zero`` (affine layers only)."""
    return scale_key(weight_key)[: -len(SCALE_LEAF)] + ZERO_LEAF


def is_canonical(path: str | os.PathLike[str]) -> bool:
    """True for a safetensors file carrying canonical Bonsai metadata (cheap: reads the header only)."""
    try:
        _, meta = read_header(path)
    except BonsaiFormatError:
        return False
    return meta.get("bonsai_format") == CANONICAL_MARKER


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
        scale_dtype, is_affine = scale_form(ckpt, key, packed)
        g = k_in // GROUP_SIZE
        specs.append(TensorSpec(key, torch.uint8, (n, k_in * bits // 8), lambda k=key: packed(k).codes))
        specs.append(TensorSpec(scale_key(key), scale_dtype, (n, g), lambda k=key, a=is_affine: _part(ckpt, packed(k), k, a, "scales")))
        if is_affine:
            specs.append(TensorSpec(zero_key(key), scale_dtype, (n, g), lambda k=key: _part(ckpt, packed(k), k, True, "zeros")))
    return specs


class ScaleDtypes(dict):
    """BFL layer -> scale dtype, plus which layers are affine (read from a canonical header)."""

    def __init__(self, dtypes: dict[str, torch.dtype], affine_keys: set[str]) -> None:
        super().__init__(dtypes)
        self.affine_keys = frozenset(affine_keys)

    def affine(self, key: str) -> bool:
        return key in self.affine_keys


def scale_form(ckpt: BonsaiCheckpoint, key: str, packed: Callable[[str], PackedWeight]) -> tuple[torch.dtype, bool]:
    """(scale dtype, affine?) of one packed layer: from the reader's table when it has one
    (computed from the scales alone; a table without ``affine()`` belongs to a layout that has
    no affine layers), else from the loaded layer."""
    table = ckpt.extra.get("scale_dtypes")
    if isinstance(table, Mapping) and key in table:
        affine = getattr(table, "affine", None)
        return table[key], bool(affine(key)) if affine is not None else False
    p = packed(key)
    return p.scales.dtype, p.is_affine


def _part(ckpt: BonsaiCheckpoint, p: PackedWeight, key: str, announced: bool, leaf: str) -> torch.Tensor:
    """``p.scales`` / ``p.zeros``, refusing a layer whose kind differs from what the header announced
    (the header is written first; silently dropping zeros would change the model)."""
    if p.is_affine != announced:
        kind = "affine" if p.is_affine else "canonical"
        raise BonsaiFormatError(ckpt.path, key, f"loaded as a {kind} layer, but its reader's scale table said otherwise")
    return p.scales if leaf == "scales" else p.zeros  # type: ignore[return-value]


def save_canonical(ckpt: BonsaiCheckpoint, path: str | os.PathLike[str]) -> int:
    """Write ``ckpt`` as one canonical ``.safetensors`` (atomic). Returns bytes written.
    Version 1 without affine layers, :data:`AFFINE_FORMAT_VERSION` with one."""
    specs = canonical_specs(ckpt)
    md = ckpt.meta.to_metadata()
    if any(spec.name.endswith("." + ZERO_LEAF) for spec in specs):
        md["bonsai_format_version"] = str(max(AFFINE_FORMAT_VERSION, int(md["bonsai_format_version"])))
    return write_safetensors(path, specs, md)


def write_canonical(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str]) -> Path:
    """The registry's writer: :func:`save_canonical`, returning the file written."""
    save_canonical(ckpt, out)
    return Path(out)


def read_canonical(
    path: str | os.PathLike[str], variant: str | None = None, *, reader: SafetensorsReader | None = None
) -> BonsaiCheckpoint:
    """The registry's reader: a canonical file served by positioned reads (converting streams
    one layer at a time; a map's touched pages would stay resident), checked against ``variant``."""
    from .formats.layout import variant_for

    ckpt = load_canonical(reader if reader is not None else path, mmap=False)
    variant_for(ckpt.path, ckpt.meta.bits, variant)
    return ckpt


def _meta(path: Path, md: dict[str, str]) -> BonsaiMeta:
    if md.get("bonsai_format") != CANONICAL_MARKER:
        raise BonsaiFormatError(path, None, "not a canonical Bonsai file (no 'bonsai_format' metadata)")
    try:
        version = int(md["bonsai_format_version"])
        cfg_json = loads_strict(md["klein_config"], path, "__metadata__.klein_config")
        if not isinstance(cfg_json, dict):
            raise TypeError("klein_config is not a JSON object")
        meta = BonsaiMeta(
            variant=md["variant"],
            config=KleinConfig(**cfg_json),
            source_format=md.get("source_format", "canonical"),
            source_repo=md.get("source_repo", ""),
            source_sha256=md.get("source_sha256", ""),
            group_size=int(md.get("group_size", GROUP_SIZE)),
        )
        bits = int(md.get("bits", meta.bits))
    except BonsaiFormatError:
        raise
    except (KeyError, ValueError, TypeError) as e:  # GeometryError is a ValueError
        what = "transformer geometry" if isinstance(e, GeometryError) else "metadata"
        raise BonsaiFormatError(path, "__metadata__", f"invalid canonical {what}: {e}") from e
    if version > AFFINE_FORMAT_VERSION:
        raise BonsaiFormatError(
            path, None, f"format version {version} is newer than this reader ({AFFINE_FORMAT_VERSION}); update the node pack"
        )
    if bits != meta.bits:
        raise BonsaiFormatError(path, "__metadata__", f"metadata says bits={bits} but variant {meta.variant} has {meta.bits}")
    return meta


def load_canonical(path: str | os.PathLike[str] | SafetensorsReader, *, mmap: bool = True) -> BonsaiCheckpoint:
    """Open a canonical file lazily, validating metadata, key set and every shape from its header.

    ``path`` may be a reader already open on the file (detection opens it once and hands it on).
    ``mmap`` picks how tensors are read (see :class:`SafetensorsReader`). Every layer is checked
    for finite scales and valid codes as it is loaded; dense tensors for finite values."""
    r = path if isinstance(path, SafetensorsReader) else SafetensorsReader(path, mmap=mmap)
    path = r.path
    meta = _meta(path, r.metadata)
    cfg, bits = meta.config, meta.bits
    packed_shapes: dict[str, tuple[int, int]] = {}
    affine_keys: set[str] = set()
    expected_q, expected_d = bfl_expected_shapes(cfg)
    for key in expected_q:
        sk = scale_key(key)
        for k in (key, sk):
            if k not in r:
                raise BonsaiFormatError(path, k, "tensor is missing")
        if r.dtype_name(key) != "U8" or len(r.shape(key)) != 2:
            raise BonsaiFormatError(path, key, f"packed codes must be 2-D U8, found {r.dtype_name(key)} {list(r.shape(key))}")
        if r.dtype_name(sk) not in ("F16", "BF16", "F32") or len(r.shape(sk)) != 2:
            raise BonsaiFormatError(path, sk, f"scales must be 2-D F16/BF16/F32, found {r.dtype_name(sk)} {list(r.shape(sk))}")
        n, kb = r.shape(key)
        ns, g = r.shape(sk)
        k_in = kb * 8 // bits
        if ns != n or g * GROUP_SIZE != k_in:
            raise BonsaiFormatError(
                path, key, f"codes {[n, kb]} at {bits} bit do not match scales {[ns, g]} (mixed group size or wrong variant?)"
            )
        if (n, k_in) != expected_q[key]:
            raise BonsaiFormatError(
                path, key, f"logical shape {[n, k_in]} does not match the metadata's geometry ({list(expected_q[key])})"
            )
        zk = zero_key(key)
        if zk in r:
            if r.dtype_name(zk) != r.dtype_name(sk) or r.shape(zk) != r.shape(sk):
                raise BonsaiFormatError(
                    path, zk, f"zeros {r.dtype_name(zk)} {list(r.shape(zk))} must match the scales ({r.dtype_name(sk)} {[ns, g]})"
                )
            affine_keys.add(key)
        packed_shapes[key] = (n, k_in)
    dense_shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for key in expected_d:
        if key not in r:
            raise BonsaiFormatError(path, key, "tensor is missing")
        dtype = _ST_TO_DTYPE.get(r.dtype_name(key))
        if dtype is None or not dtype.is_floating_point:
            raise BonsaiFormatError(path, key, f"dense tensor has dtype {r.dtype_name(key)}; expected a float type")
        if r.shape(key) != expected_d[key]:
            raise BonsaiFormatError(
                path, key, f"shape {list(r.shape(key))} does not match the metadata's geometry ({list(expected_d[key])})"
            )
        dense_shapes[key] = (dtype, r.shape(key))
    known = set(expected_d) | set(expected_q) | {scale_key(k) for k in expected_q} | {zero_key(k) for k in affine_keys}
    unknown = [k for k in r.keys() if k not in known]
    if unknown:
        raise BonsaiFormatError(path, unknown[0], f"unexpected tensor ({len(unknown)} unexpected in all)")

    def load_packed(key: str) -> PackedWeight:
        if key not in packed_shapes:
            raise BonsaiFormatError(path, key, "not a quantized layer")
        zeros = r.get(zero_key(key)) if key in affine_keys else None
        return check_values(PackedWeight(r.get(key), r.get(scale_key(key)), bits, zeros=zeros), path, key)

    def load_dense(key: str) -> torch.Tensor:
        if key not in dense_shapes:
            raise BonsaiFormatError(path, key, "not a dense tensor")
        return check_dense_values(r.get(key), path, key)

    return BonsaiCheckpoint(
        path=path,
        meta=meta,
        packed_shapes=packed_shapes,
        dense_shapes=dense_shapes,
        load_packed=load_packed,
        load_dense=load_dense,
        bytes_on_disk=r.size,
        extra={"scale_dtypes": ScaleDtypes({k: _ST_TO_DTYPE[r.dtype_name(scale_key(k))] for k in packed_shapes}, affine_keys)},
    )
