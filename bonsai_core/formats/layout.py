"""Glue shared by the diffusers-named layouts (gemlite, MLX, unpacked) and the BFL-named
:class:`BonsaiCheckpoint`: inventory validation, fusing q/k/v on read, splitting on write,
the released JSON side files, and the variant check every reader applies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..bounded import read_json_object
from ..checkpoint import BonsaiCheckpoint, BonsaiMeta
from ..errors import BonsaiFormatError
from ..klein import (
    DIFFUSERS_SKIP_PATTERNS,
    GROUP_SIZE,
    SWAPPED_HALVES_KEY,
    GeometryError,
    KleinConfig,
    bfl_dense_tensors,
    bfl_expected_shapes,  # noqa: F401  (re-exported: older callers import it from here)
    bfl_quantized_layers,
    diffusers_dense_tensors,
    diffusers_quantized_linears,
    infer_config_from_diffusers_shapes,
    swap_halves,
)
from ..packing import BITS_VARIANT, VARIANT_BITS, PackedWeight, compact_scales

SOLVER = {1: "binary", 2: "ternary"}


def check_expected_variant(path: str | os.PathLike[str], variant: str | None) -> None:
    """Refuse an unknown ``variant=`` expectation before reading anything."""
    if variant is not None and variant not in VARIANT_BITS:
        raise BonsaiFormatError(path, None, f"unknown variant {variant!r}; expected one of {sorted(VARIANT_BITS)}")


def variant_for(path: str | os.PathLike[str], bits: int, expected: str | None, tensor: str | None = None, why: str = "") -> str:
    """The variant a checkpoint of ``bits`` is, checked against the caller's expectation."""
    check_expected_variant(path, expected)
    if bits not in BITS_VARIANT:
        raise BonsaiFormatError(path, tensor, f"{bits}-bit weights are not a Bonsai variant (binary is 1-bit, ternary 2-bit)")
    found = BITS_VARIANT[bits]
    if expected is not None and expected != found:
        raise BonsaiFormatError(
            path, tensor, f"expected a {expected} checkpoint but this one is {found} ({bits}-bit{', ' + why if why else ''})"
        )
    return found


def read_json(path: Path, *, required: bool = True) -> dict | None:
    """A released JSON side file, parsed with limits (regular file, size cap, strict numbers)."""
    return read_json_object(path, required=required)


def quant_json_bits(path: Path, qcfg: dict, *, default_bits: int | None = None) -> int:
    """``bits`` and ``group_size`` of a ``quantization_config.json``, validated."""
    bits = qcfg.get("bits", default_bits)
    gs = qcfg.get("group_size", GROUP_SIZE)
    if bits is None:
        raise BonsaiFormatError(path, "bits", "no 'bits' entry")
    if type(bits) is not int or type(gs) is not int:
        raise BonsaiFormatError(path, "bits", f"bits {bits!r} / group_size {gs!r} must be integers")
    if gs != GROUP_SIZE:
        raise BonsaiFormatError(path, None, f"group_size {gs} is not supported (Bonsai uses {GROUP_SIZE} everywhere)")
    return bits


def load_transformer_config(path: Path, logical: Mapping[str, tuple[int, ...]]) -> KleinConfig:
    """Geometry from ``config.json`` when present, cross-checked against the tensors' shapes."""
    try:
        inferred = infer_config_from_diffusers_shapes(dict(logical))
    except GeometryError as e:
        raise BonsaiFormatError(path.parent, e.tensor, f"cannot infer the transformer geometry: {e}") from e
    cfg_json = read_json(path, required=False)
    if cfg_json is None:
        return inferred
    try:
        declared = KleinConfig.from_diffusers_config(cfg_json)
    except GeometryError as e:
        raise BonsaiFormatError(path, e.tensor, f"invalid transformer config: {e}") from e
    if declared != inferred:
        raise BonsaiFormatError(path, None, f"config.json describes {declared} but the weights have shapes of {inferred}")
    return declared


def validate_inventory(path: str | os.PathLike[str], cfg: KleinConfig, logical: Mapping[str, tuple[int, ...]], packed: set[str]) -> None:
    """Every expected diffusers tensor present with its shape, quantized exactly where released.

    ``logical``: diffusers key (``<module>.weight`` or norm key) -> logical shape (out, in).
    ``packed``: the ``<module>.weight`` keys stored packed.
    """
    qlin = {f"{m}.weight": s for m, s in diffusers_quantized_linears(cfg).items()}
    dense = diffusers_dense_tensors(cfg)
    for key, shape in {**dense, **qlin}.items():
        if key not in logical:
            raise BonsaiFormatError(path, key, "tensor is missing")
        if tuple(logical[key]) != tuple(shape):
            raise BonsaiFormatError(path, key, f"shape {list(logical[key])} does not match the expected {list(shape)}")
    for key in qlin:
        if key not in packed:
            raise BonsaiFormatError(path, key, "is stored dense, but every Bonsai release packs this linear")
    for key in dense:
        if key in packed:
            raise BonsaiFormatError(path, key, "is stored packed, but it is on the released skip list (must be dense)")
    unknown = [k for k in logical if k not in qlin and k not in dense]
    if unknown:
        raise BonsaiFormatError(path, unknown[0], f"unexpected tensor ({len(unknown)} unexpected in all)")


def fuse(parts: list[PackedWeight]) -> PackedWeight:
    """Fuse diffusers q/k/v along N; scales are re-compacted over the whole fused layer. If any
    part is affine the fused layer is (canonical parts become their exact ``(STEP * s, -s)``)."""
    if len(parts) == 1:
        return parts[0]
    codes = torch.cat([p.codes for p in parts], 0)
    if any(p.is_affine for p in parts):
        pairs = [p.affine(torch.float32) for p in parts]
        both = compact_scales(torch.stack([torch.cat([a for a, _ in pairs], 0), torch.cat([z for _, z in pairs], 0)]))
        return PackedWeight(codes, both[0], parts[0].bits, zeros=both[1])
    scales = compact_scales(torch.cat([p.scales.float() for p in parts], 0))
    return PackedWeight(codes, scales, parts[0].bits)



def diffusers_to_bfl(
    path: Path,
    meta: BonsaiMeta,
    load_module: Callable[[str], PackedWeight],
    load_dense: Callable[[str], torch.Tensor],
    dense_dtypes: Mapping[str, torch.dtype],
    *,
    bytes_on_disk: int,
    scale_dtypes: Mapping[str, torch.dtype] | None = None,
) -> BonsaiCheckpoint:
    """A BFL-named lazy checkpoint over a diffusers-named source (inventory already validated).

    ``load_module(m)``: the diffusers linear ``m`` (no ``.weight``) as canonical codes.
    ``load_dense(k)``: the diffusers dense tensor ``k``.
    """
    cfg = meta.config
    dshapes = diffusers_quantized_linears(cfg)
    qmap = bfl_quantized_layers(cfg)
    dmap = bfl_dense_tensors(cfg)
    dense_shapes_d = diffusers_dense_tensors(cfg)
    packed_shapes = {bk: (sum(dshapes[m][0] for m in mods), dshapes[mods[0]][1]) for bk, mods in qmap.items()}
    dense_shapes = {bk: (dense_dtypes[dk], dense_shapes_d[dk]) for bk, dk in dmap.items()}

    def load_packed(bk: str) -> PackedWeight:
        if bk not in qmap:
            raise BonsaiFormatError(path, bk, "not a quantized layer")
        return fuse([load_module(m) for m in qmap[bk]])

    def load_dense_bfl(bk: str) -> torch.Tensor:
        if bk not in dmap:
            raise BonsaiFormatError(path, bk, "not a dense tensor")
        t = load_dense(dmap[bk])
        return swap_halves(t) if bk == SWAPPED_HALVES_KEY else t

    extra: dict[str, object] = {}
    if scale_dtypes is not None:
        extra["scale_dtypes"] = scale_dtypes
    return BonsaiCheckpoint(
        path=path,
        meta=meta,
        packed_shapes=packed_shapes,
        dense_shapes=dense_shapes,
        load_packed=load_packed,
        load_dense=load_dense_bfl,
        bytes_on_disk=bytes_on_disk,
        extra=extra,
    )


class DiffusersView:
    """The diffusers-named face of a BFL checkpoint, for writers: split fused layers, un-swap
    ``norm_out``. One fused layer is cached so q, k and v come from a single read."""

    def __init__(self, ckpt: BonsaiCheckpoint) -> None:
        self.ckpt = ckpt
        cfg = ckpt.meta.config
        self.modules = diffusers_quantized_linears(cfg)  # module -> (out, in), file order
        self._where: dict[str, tuple[str, int, list[int]]] = {}
        for bk, mods in bfl_quantized_layers(cfg).items():
            sizes = [self.modules[m][0] for m in mods]
            for i, m in enumerate(mods):
                self._where[m] = (bk, i, sizes)
        self._dense_src = {dk: bk for bk, dk in bfl_dense_tensors(cfg).items()}
        self.dense = {dk: (ckpt.dense_shapes[bk][0], diffusers_dense_tensors(cfg)[dk]) for dk, bk in self._dense_src.items()}
        self.dense = {k: self.dense[k] for k in diffusers_dense_tensors(cfg)}  # released order
        self._cache: tuple[str, list[PackedWeight]] | None = None

    def packed(self, module: str) -> PackedWeight:
        bk, i, sizes = self._where[module]
        if self._cache is None or self._cache[0] != bk:
            self._cache = None  # drop the previous layer before reading the next
            self._cache = (bk, self.ckpt.load_packed(bk).split(sizes))
        return self._cache[1][i]

    def dense_tensor(self, key: str) -> torch.Tensor:
        bk = self._dense_src[key]
        t = self.ckpt.load_dense(bk)
        return swap_halves(t) if bk == SWAPPED_HALVES_KEY else t

    def items(self) -> Iterator[tuple[str, PackedWeight | torch.Tensor]]:
        for k in self.dense:
            yield k, self.dense_tensor(k)
        for m in self.modules:
            yield m, self.packed(m)


def quantization_config(fmt: str, bits: int, cfg: KleinConfig, **extra: object) -> dict[str, object]:
    """The released ``quantization_config.json`` keys (docs/FORMAT.md, "The releases")."""
    quantized = list(diffusers_quantized_linears(cfg))
    out: dict[str, object] = {
        "format": fmt,
        "bits": bits,
        "group_size": GROUP_SIZE,
        "solver": SOLVER[bits],
    }
    out.update(extra)
    out.update(
        {
            "quantized_count": len(quantized),
            "skipped_count": len(DIFFUSERS_SKIP_PATTERNS),
            "quantized_fqns": quantized,
            "skip_patterns": list(DIFFUSERS_SKIP_PATTERNS),
        }
    )
    return out


def check_quantized_fqns(path: Path, qcfg: dict, cfg: KleinConfig) -> None:
    """If the JSON lists the quantized modules, they must be exactly the released 100."""
    fqns = qcfg.get("quantized_fqns")
    if fqns is None:
        return
    expected = set(diffusers_quantized_linears(cfg))
    if not isinstance(fqns, list) or not all(isinstance(f, str) for f in fqns):
        raise BonsaiFormatError(path, "quantized_fqns", "is not a list of module names")
    got = set(fqns)
    if got != expected:
        odd = sorted(got ^ expected)
        raise BonsaiFormatError(path, odd[0] if odd else None, f"quantized_fqns differs from the released list ({len(odd)} differences)")


def guess_source_repo(path: Path) -> str:
    """``org/name`` of a Hugging Face snapshot (cache folder ``models--org--name``) or a folder
    named like a released repo; empty when unknown."""
    for p in [path, *path.parents]:
        if p.name.startswith("models--"):
            return p.name[len("models--") :].replace("--", "/", 1)
        if p.name.startswith("bonsai-image-"):
            return f"prism-ml/{p.name}"
    return ""


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class LazyScaleDtypes(Mapping[str, torch.dtype]):
    """BFL layer -> canonical scale dtype, computed on first use from the scales alone.

    A canonical header is written before any tensor, so writers need each layer's scale dtype
    (and whether it is affine, i.e. also has zeros) up front; computing it from the (small)
    scales avoids a second full read of the codes. ``compute`` returns the dtype, or
    ``(dtype, affine)`` for layouts that can hold affine layers."""

    def __init__(self, keys: list[str], compute: Callable[[str], torch.dtype | tuple[torch.dtype, bool]]) -> None:
        self._keys = keys
        self._compute = compute
        self._done: dict[str, tuple[torch.dtype, bool]] = {}

    def _form(self, key: str) -> tuple[torch.dtype, bool]:
        if key not in self._done:
            if key not in self._keys:
                raise KeyError(key)
            got = self._compute(key)
            self._done[key] = got if isinstance(got, tuple) else (got, False)
        return self._done[key]

    def __getitem__(self, key: str) -> torch.dtype:
        return self._form(key)[0]

    def affine(self, key: str) -> bool:
        """True when layer ``key`` keeps a per-group zero (see ``PackedWeight.zeros``)."""
        return self._form(key)[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    """Index of the first element where ``a != b`` (both same shape)."""
    return tuple((a != b).nonzero()[0].tolist())



def _madvise() -> Callable[[int, int, int], int] | None:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the range; non-destructive (clean file pages are re-read on access)
_PAGE = 4096


def release_pages(*tensors: torch.Tensor) -> None:
    """Hint the kernel to take the pages of memory-mapped source tensors out of this process's
    resident set once a layer is converted (``torch.load(mmap=True)`` keeps every touched page
    mapped otherwise). MADV_PAGEOUT never discards data, so this is safe on any memory; where it
    is unsupported (other OSes, old kernels) it does nothing."""
    if _MADVISE is None:
        return
    for t in tensors:
        st = t.untyped_storage()
        start, n = st.data_ptr(), st.nbytes()
        if n < _PAGE:
            continue
        lo = (start + _PAGE - 1) // _PAGE * _PAGE  # whole pages inside the storage only
        hi = (start + n) // _PAGE * _PAGE
        if hi > lo:
            _MADVISE(lo, hi - lo, _MADV_PAGEOUT)
