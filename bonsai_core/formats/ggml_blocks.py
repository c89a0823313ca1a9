"""ggml block layouts of binary and ternary GGUF tensors, converted to the canonical codes.

Each layout is a public ggml type (docs/FORMAT.md §2.4 names the source of each). Every one stores
per block one fp16 scale ``d`` and one code per weight with value ``(q - 1) * d`` (ternary; code 3
would be ``+2d``, which no Bonsai layer holds and :func:`..packing.check_values` refuses) or
``q ? +d : -d`` (binary). Those are the canonical code maps of :mod:`..packing`, so a block becomes
canonical codes + one scale per 128-group with no arithmetic on the values:

* 128-weight blocks (``Q1_0``, PrismML's early ``Q2_0``, ``PQ2_0``, ``PTQ1_0``): one scale per group.
* 64-weight blocks (mainline ``Q2_0``): two blocks per group; they must share the scale unless one of
  them is all zeros, else the layer is not a Bonsai layer (one magnitude per 128 weights).
* 256-weight blocks (mainline ``TQ1_0``/``TQ2_0``): the block's scale serves both of its groups.

Type id 42 means two layouts: mainline ``Q2_0`` (64 weights / 18 bytes) and PrismML's first ``Q2_0``
(128 / 34). The header does not say which, so :func:`resolve_q2_0` decides from the bytes each
tensor occupies in the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..klein import GROUP_SIZE
from ..packing import pack_codes

Q1_0, Q2_0, TQ1_0, TQ2_0, PQ2_0, PTQ1_0 = 41, 42, 34, 35, 142, 143
POW3 = (1, 3, 9, 27, 81)


@dataclass(frozen=True)
class BlockLayout:
    """One ggml block layout: ``weights`` codes and an fp16 scale in ``nbytes`` bytes."""

    name: str
    type_id: int
    weights: int
    nbytes: int
    bits: int  # 1 binary, 2 ternary
    scale_at: int  # byte offset of the fp16 scale inside a block
    codec: str  # "lsb": canonical codes after the scale; "tq2": TQ2_0's bit-pair runs; "trits": base 3

    def tensor_nbytes(self, n_elements: int) -> int:
        return n_elements // self.weights * self.nbytes


LAYOUTS = {
    "Q1_0": BlockLayout("Q1_0", Q1_0, 128, 18, 1, 0, "lsb"),
    "Q2_0": BlockLayout("Q2_0", Q2_0, 64, 18, 2, 0, "lsb"),  # mainline llama.cpp / ggml
    "Q2_0_g128": BlockLayout("Q2_0 (PrismML's 128-weight blocks)", Q2_0, 128, 34, 2, 0, "lsb"),
    "PQ2_0": BlockLayout("PQ2_0", PQ2_0, 128, 34, 2, 0, "lsb"),
    "PTQ1_0": BlockLayout("PTQ1_0", PTQ1_0, 128, 28, 2, 26, "trits"),
    "TQ1_0": BlockLayout("TQ1_0", TQ1_0, 256, 54, 2, 52, "trits"),
    "TQ2_0": BlockLayout("TQ2_0", TQ2_0, 256, 66, 2, 64, "tq2"),
}
BY_TYPE = {lay.type_id: lay for key, lay in LAYOUTS.items() if key != "Q2_0_g128"}
TYPE_NAMES = {lay.type_id: lay.name.split(" ")[0] for lay in LAYOUTS.values()}


def resolve_q2_0(n_elements: int, span: int, alignment: int) -> list[BlockLayout]:
    """The type-42 layouts whose size fits the ``span`` bytes a tensor occupies (up to the next
    tensor, or the end of the file for the last one): writers pad each tensor to ``alignment``
    (the last one maybe not), so the span lies between the size and the size rounded up."""
    fits = []
    for lay in (LAYOUTS["Q2_0"], LAYOUTS["Q2_0_g128"]):
        size = lay.tensor_nbytes(n_elements)
        if n_elements % lay.weights == 0 and size <= span <= -(-size // alignment) * alignment:
            fits.append(lay)
    return fits


class GroupScaleMismatch(ValueError):
    """Two 64-weight blocks of one 128-group carry different scales (row, group, the two scales)."""

    def __init__(self, row: int, group: int, d0: float, d1: float) -> None:
        super().__init__(row, group, d0, d1)
        self.row, self.group, self.d0, self.d1 = row, group, d0, d1


def _scales(blocks: torch.Tensor, lay: BlockLayout) -> torch.Tensor:
    return blocks[..., lay.scale_at : lay.scale_at + 2].contiguous().view(torch.float16).squeeze(-1)


# the five trits of every byte: a byte holds its trits as a fixed-point fraction of 243, and trit n
# is the integer part of three times that fraction after multiplying by 3**n (mod 256)
_BYTES = torch.arange(256, dtype=torch.int32).unsqueeze(1)
TRIT_TABLE = ((((_BYTES * torch.tensor(POW3, dtype=torch.int32)) & 255) * 3) >> 8).to(torch.uint8)  # [256, 5]

# base-3 layouts: (first byte, bytes) per stage of qs, then (first byte, bytes) of qh
TRIT_STAGES = {"TQ1_0": (((0, 32), (32, 16)), (48, 4)), "PTQ1_0": (((0, 16), (16, 8)), (24, 2))}


def _trits(blocks: torch.Tensor, layout: str) -> torch.Tensor:
    """Codes 0..2 of base-3 blocks ``[R, B, nbytes]`` in value order ``[R, B, weights]``: a qs stage
    of ``c`` bytes holds value ``n * c + m`` in trit ``n`` (0..4) of its byte ``m``; the ``qh`` bytes
    hold four trits each, value ``n * len(qh) + h`` in trit ``n`` of byte ``h``."""
    stages, (qh_at, qh_len) = TRIT_STAGES[layout]
    parts = []
    for first, c in stages:
        t = TRIT_TABLE[blocks[..., first : first + c].long()]  # [R, B, c, 5]
        parts.append(t.transpose(-1, -2).reshape(*blocks.shape[:-1], 5 * c))
    t = TRIT_TABLE[blocks[..., qh_at : qh_at + qh_len].long(), :4]  # [R, B, qh, 4]
    parts.append(t.transpose(-1, -2).reshape(*blocks.shape[:-1], 4 * qh_len))
    return torch.cat(parts, dim=-1)


def _tq2_codes(blocks: torch.Tensor) -> torch.Tensor:
    """TQ2_0 codes in value order: value ``128h + 32l + m`` sits in bits ``2l`` of byte ``32h + m``
    (each 32-byte half holds 128 values as four 32-value runs, one per bit pair)."""
    qs = blocks[..., :64].reshape(*blocks.shape[:-1], 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1)
    return ((qs >> shifts) & 3).reshape(*blocks.shape[:-1], 256)


def to_canonical(raw: torch.Tensor, lay: BlockLayout, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw tensor bytes (``n`` rows of ``k`` weights in ``lay`` blocks) -> canonical
    ``(codes [n, k*bits/8], scales fp16 [n, k/128])``. Raises :class:`GroupScaleMismatch`."""
    blocks = raw.view(n, k // lay.weights, lay.nbytes)
    d = _scales(blocks, lay)
    if lay.codec == "lsb":
        codes = blocks[..., 2:]  # the codes are already LSB-first along K, as canonical codes are
        if lay.weights == 64:
            codes, d = _merge_halves(codes.reshape(n, k // GROUP_SIZE, 32), d.reshape(n, k // GROUP_SIZE, 2))
        return codes.reshape(n, k * lay.bits // 8).contiguous(), d.contiguous()
    q = _tq2_codes(blocks) if lay.codec == "tq2" else _trits(blocks, lay.name)
    if lay.weights == 256:
        d = d.repeat_interleave(2, dim=1)
    return pack_codes(q.reshape(n, k), 2), d.contiguous()


def _merge_halves(codes: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64-weight blocks per group ``codes [n, g, 32]``, ``d [n, g, 2]`` -> one scale per group.

    A half that is all zeros (every code 1, or scale 0) takes the other half's scale (its codes are
    set to 1 so it stays zero at that scale); otherwise the two scales must be the same number."""
    halves = codes.view(codes.shape[0], codes.shape[1], 2, 16)
    silent = ((halves == 0x55).all(dim=-1) | (d == 0)) & torch.isfinite(d)  # (q - 1) * NaN is NaN, not zero
    scale = torch.where(silent[..., 0], d[..., 1], d[..., 0])
    clash = ~silent.any(dim=-1) & (d[..., 0] != d[..., 1])
    if bool(clash.any()):
        row, group = clash.nonzero()[0].tolist()
        raise GroupScaleMismatch(row, group, float(d[row, group, 0]), float(d[row, group, 1]))
    if bool(silent.any()):
        halves = torch.where(silent.unsqueeze(-1), torch.full_like(halves, 0x55), halves)
    return halves.reshape(codes.shape), scale
