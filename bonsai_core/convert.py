"""convert (any layout -> canonical or a released layout) and dequantize (-> dense bf16 with
ComfyUI/BFL key names). Both stream one layer at a time and write atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import check_output_path
from .checkpoint import BonsaiCheckpoint
from .errors import BonsaiFormatError
from .escape import escaping_logger
from .formats.detect import open_checkpoint
from .formats.registry import get_format
from .safetensors_io import TensorSpec, write_safetensors

log = escaping_logger(__name__)


def write_checkpoint(ckpt: BonsaiCheckpoint, out: str | os.PathLike[str], fmt: str = "canonical") -> Path:
    """Write ``ckpt`` in layout ``fmt``; returns the file or pack folder written.

    ``out`` must not exist as a folder (or anything but a regular file): writes only ever add.
    """
    try:
        spec = get_format(fmt)
    except ValueError as e:
        raise BonsaiFormatError(out, None, str(e)) from None
    if not spec.holds(ckpt.meta.variant):
        raise BonsaiFormatError(
            out, None, f"the {fmt} layout holds {' and '.join(spec.variants)} weights only; this checkpoint is {ckpt.meta.variant}"
        )
    return spec.write(ckpt, check_output_path(out))


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], to: str = "canonical", variant: str | None = None) -> Path:
    """Read ``src`` in whatever layout it is and write it as ``to`` (lossless)."""
    check_output_path(dst)  # before reading anything: a wrong output argument fails fast
    ckpt = open_checkpoint(src, variant)
    log.info("converting %s (%s, %s) -> %s (%s)", src, ckpt.meta.source_format, ckpt.meta.variant, dst, to)
    return write_checkpoint(ckpt, dst, to)


def dense_specs(ckpt: BonsaiCheckpoint, dtype: torch.dtype = torch.bfloat16) -> list[TensorSpec]:
    """Every tensor dense in ``dtype`` under its BFL key (what stock ComfyUI loads)."""

    def packed(key: str) -> torch.Tensor:
        p = ckpt.load_packed(key)
        # dequantize() evaluates W = q * scale + zero in float32 and rounds once to dtype: exact for
        # a canonical layer whose s is a value of dtype (every product is +-s or 0)
        if p.is_affine:
            log.warning("%s: affine layer (q * scale + zero per group); the dense %s copy is rounded", key, dtype)
        elif not torch.equal(p.scales.float().to(dtype).float(), p.scales.float()):
            log.warning("%s: scales are not exact in %s; the dense copy is rounded", key, dtype)
        return p.dequantize(dtype)

    specs = [TensorSpec(k, dtype, tuple(s), lambda k=k: ckpt.load_dense(k).to(dtype)) for k, (_, s) in ckpt.dense_shapes.items()]
    specs += [TensorSpec(k, dtype, tuple(s), lambda k=k: packed(k)) for k, s in ckpt.packed_shapes.items()]
    return specs


def dequantize_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], variant: str | None = None) -> Path:
    """Write ``src`` as dense bf16 safetensors with BFL keys, loadable by ComfyUI's UNETLoader."""
    dst = check_output_path(dst)
    ckpt = open_checkpoint(src, variant)
    if dst.suffix != ".safetensors":
        raise BonsaiFormatError(dst, None, "the dense output must be a .safetensors file")
    md = {"bonsai_dequantized_from": ckpt.meta.source_format, "variant": ckpt.meta.variant, "source_repo": ckpt.meta.source_repo}
    write_safetensors(dst, dense_specs(ckpt), md)
    return dst
