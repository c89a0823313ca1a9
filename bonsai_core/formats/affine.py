"""Affine packs (gemlite mode 4, MLX): one layer's ``(codes, scale, zero)`` as a
:class:`~bonsai_core.packing.PackedWeight`, canonical where the Bonsai relation holds exactly and
affine where it does not, and the once-per-file count of the groups that needed the affine path.
"""

from __future__ import annotations

import os

import torch

from ..errors import BonsaiFormatError
from ..escape import escaping_logger
from ..packing import PackedWeight, all_finite, check_values, compact_scales, exact_relation, split_affine

log = escaping_logger(__name__)


class AffineTally:
    """Counts, per file, the groups that break the exact Bonsai relation, and logs the total once
    every packed module of the file has been read (a second read of a module is not counted)."""

    def __init__(self, path: str | os.PathLike[str], modules: int) -> None:
        self.path = path
        self.modules = modules
        self.seen: set[str] = set()
        self.groups = 0
        self.total = 0
        self.layers: list[str] = []

    def add(self, module: str, off: int, total: int) -> None:
        if module in self.seen:
            return
        self.seen.add(module)
        self.groups += off
        self.total += total
        if off:
            self.layers.append(module)
        if len(self.seen) == self.modules:
            if self.groups:
                log.info(
                    "%s: %d of %d groups in %d layers (first: %s) are not the exact Bonsai pair; "
                    "those layers keep the file's own (scale, zero) and compute W = q * scale + zero",
                    self.path, self.groups, self.total, len(self.layers), self.layers[0],
                )  # fmt: skip
            else:
                log.debug("%s: all %d groups hold the exact Bonsai relation", self.path, self.total)


def packed_from_affine(
    path: str | os.PathLike[str],
    module: str,
    codes: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    bits: int,
    names: tuple[str, str, str],
    tally: AffineTally | None = None,
) -> PackedWeight:
    """One layer of an affine pack ``W = q * scale + offset`` (gemlite mode 4, MLX).

    Bonsai writes offset = -s and scale = STEP[bits] * s (binary 2s, ternary s): where every
    group holds that exactly the layer becomes canonical codes + ``s``; otherwise it keeps the
    file's own pair (:func:`bonsai_core.packing.split_affine`) and ``tally`` counts the groups.
    Refused: non-finite scales or offsets, ternary code 3, shapes that do not fit. ``codes`` uint8
    [N, K*bits/8], ``scales``/``offsets`` [N, K/128]; ``names`` = (codes, scales, offsets) leaves.
    """
    for name, t in ((names[1], scales), (names[2], offsets)):
        if not all_finite(t):
            n, g = first_nonfinite(t)
            raise BonsaiFormatError(path, f"{module}.{name}", f"row {n}, group {g} is {t[n, g].item()}; must be finite")
    try:
        p, off = split_affine(codes, scales, offsets, bits)
    except ValueError as e:
        raise BonsaiFormatError(path, f"{module}.{names[0]}", str(e)) from e
    p = check_values(p, path, f"{module}.{names[0]}")
    if tally is not None:
        tally.add(module, off, p.scales.numel())
    return p


def first_nonfinite(t: torch.Tensor) -> tuple[int, ...]:
    """Index of the first NaN or infinity in ``t``."""
    return tuple((~torch.isfinite(t)).nonzero()[0].tolist())


def scale_form(pairs: list[tuple[torch.Tensor, torch.Tensor]], bits: int) -> tuple[torch.dtype, bool]:
    """(scale dtype, affine?) of the BFL layer fused from diffusers parts given as ``(scale, zero)``
    ``[N_i, K/128]``, without reading codes: what :func:`split_affine` and ``fuse`` will produce.
    (A canonical part's exact pair is the file's pair, so the fused affine pair is the file's.)"""
    if all(bool(exact_relation(sc, z, bits).all()) for sc, z in pairs):
        return compact_scales(torch.cat([-z.float() for _, z in pairs], 0)).dtype, False
    scale = torch.cat([sc.float() for sc, _ in pairs], 0)
    zero = torch.cat([z.float() for _, z in pairs], 0)
    return compact_scales(torch.stack([scale, zero])).dtype, True


def require_canonical(path: str | os.PathLike[str], key: str, p: PackedWeight, layout: str) -> PackedWeight:
    """``p`` when it is canonical; one line refusing the export otherwise (``layout`` can only
    store one ``s`` per group, so the affine layer's values would be lost)."""
    if p.is_affine:
        raise BonsaiFormatError(
            path,
            key,
            f"is an affine layer (its source's zeros are not exactly -scale{'/2' if p.bits == 1 else ''} in every group), "
            f"which the {layout} layout cannot store; export to canonical, gemlite or mlx instead",
        )
    return p
