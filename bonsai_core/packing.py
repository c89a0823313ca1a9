"""The canonical packed representation and the one dequantization formula.

Canonical codes (see docs/FORMAT.md):

* ``codes``: uint8 ``[N, K * bits / 8]``, row-major per output feature, LSB-first along K:
  code of element ``k`` sits in byte ``k // e`` at bit ``(k % e) * bits`` with ``e = 8 // bits``.
* ``scales``: ``[N, K / 128]``, one magnitude ``s`` per 128-group along K (fp16 when that is
  exact, else the source dtype).
* binary (bits=1): code 0 -> -s, 1 -> +s.  ternary (bits=2): code 0 -> -s, 1 -> 0, 2 -> +s.

So ``W[n, k] = (q * STEP[bits] + OFFSET) * s[n, k // 128]`` with ``STEP = {1: 2, 2: 1}`` and
``OFFSET = -1``; the same weight in the affine form gemlite and MLX consume is
``W = q * scale + zero`` with ``scale = STEP * s``, ``zero = OFFSET * s`` (:func:`affine`). This
module is the only place that formula exists; every reader converts its layout *to codes* and
every backend calls :meth:`PackedWeight.dequantize` / :meth:`PackedWeight.affine`, or reads
:attr:`PackedWeight.code_map` inside a kernel and is tested bit-exact against :func:`dequantize`.

The layout was chosen so the other released layouts are views, not repacks: gemlite's
``W_q [K*bits/8, N]`` is ``codes.T`` and MLX's ``uint32 [N, K*bits/32]`` is ``codes`` viewed as
little-endian uint32.

**Affine layers.** A released gemlite/MLX pack stores each group as ``(scale, zero)``. Where every
group of a layer satisfies the Bonsai relation exactly (the usual case) the layer is kept as
codes + one ``s`` per group as above. Where any group does not (a release whose zero is only
approximately ``-scale/2``, scale 0, a subnormal bf16 scale), the layer keeps the file's own
``(scale, zero)`` per group in :attr:`PackedWeight.zeros` and :attr:`PackedWeight.scales` is then
the file's scale. Both kinds are evaluated by the same formula, :func:`dequantize_affine`:
``W = q * scale + zero`` in float32, then rounded once to the requested dtype. For valid codes
``q * scale`` is exact (q <= 2 only moves the exponent), so the result is the same whether a
backend fuses the multiply-add or not, and for a canonical layer it equals ``{-1, 0, +1} * s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import BonsaiFormatError
from .klein import GROUP_SIZE, VARIANT_BITS

BITS_VARIANT = {v: k for k, v in VARIANT_BITS.items()}
# value = q * STEP - 1  maps codes onto {-1, +1} (binary) or {-1, 0, +1} (ternary)
STEP = {1: 2, 2: 1}
OFFSET = -1
MAX_CODE = {1: 1, 2: 2}


def _check_bits(bits: int) -> None:
    if bits not in STEP:
        raise ValueError(f"bits must be 1 (binary) or 2 (ternary), got {bits}")


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` -> packed uint8 ``[N, K * bits / 8]`` (LSB-first along K)."""
    _check_bits(bits)
    n, k = codes.shape
    e = 8 // bits
    if k % e:
        raise ValueError(f"K={k} is not a multiple of {e}")
    c = codes.to(torch.uint8).reshape(n, k // e, e)
    shifted = c << _shifts(bits, codes.device)
    out = shifted[..., 0].clone()
    for i in range(1, e):
        out |= shifted[..., i]
    return out


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed uint8 ``[N, K * bits / 8]`` -> uint8 codes ``[N, K]``."""
    _check_bits(bits)
    n, kb = packed.shape
    mask = (1 << bits) - 1
    q = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & mask
    return q.reshape(n, kb * (8 // bits))


def dequantize_affine(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """THE dequantization formula: ``W[n, k] = q[n, k] * scale[n, g] + zero[n, g]`` (``g = k // 128``),
    evaluated in float32 and rounded once to ``dtype``. Dense ``[N, K]``.

    ``q * scale`` is exact for every valid code (0, 1, 2), so this is also the fused
    multiply-add a kernel may compute; only the add and the final cast round."""
    q = unpack_codes(codes, bits)
    n, k = q.shape
    g = scale.shape[1]
    if k != g * GROUP_SIZE or tuple(scale.shape) != (n, g) or tuple(zero.shape) != (n, g):
        raise ValueError(
            f"codes imply [{n}, {k}] but scale/zero are {list(scale.shape)}/{list(zero.shape)} (group size {GROUP_SIZE})"
        )
    w = q.to(torch.float32).view(n, g, GROUP_SIZE)
    w.mul_(scale.float().unsqueeze(-1)).add_(zero.float().unsqueeze(-1))
    w = w.view(n, k)
    return w if dtype == torch.float32 else w.to(dtype)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A canonical layer (codes + one ``s`` per group) through :func:`dequantize_affine`.

    Values are exactly ``{-1, 0, +1} * s`` rounded to ``dtype`` (exact whenever ``s`` is
    representable in ``dtype``; always for float32)."""
    scale, zero = affine(scales, bits)
    return dequantize_affine(codes, scale, zero, bits, dtype)


def affine(scales: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A canonical layer's ``(scale, zero)`` per group: ``(STEP * s, OFFSET * s)`` in ``dtype``.

    Computed in float32, then cast: ``STEP * s`` only moves the exponent, so both are exact in
    ``dtype`` whenever ``s`` is and ``STEP * s`` does not overflow it (callers that need fp16
    check for infinities)."""
    _check_bits(bits)
    s = scales.float()
    return (s * STEP[bits]).to(dtype), (s * OFFSET).to(dtype)


def exact_relation(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Per group, True where ``(scale, zero)`` is exactly the Bonsai pair ``(STEP * s, -s)`` with
    ``s = -zero`` (binary: ``scale == 2 * -zero``, ternary: ``scale == -zero``), compared as float32
    values. Those groups are canonical; a layer with any other group is kept affine."""
    s = -zero.float()
    want, _ = affine(s, bits)
    return scale.float() == want


def split_affine(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[PackedWeight, int]:
    """A layer read as ``W = q * scale + zero`` -> (its :class:`PackedWeight`, groups off the relation).

    Canonical (codes + ``s = -zero``) when every group satisfies :func:`exact_relation`; otherwise
    the file's own pair per group, in the smallest float dtype that holds both exactly. Raises
    ValueError on shapes that do not fit (callers name the file)."""
    ok = exact_relation(scale, zero, bits)
    off = int(ok.numel() - int(ok.sum()))
    if off == 0:
        return PackedWeight(codes, compact_scales((-zero.float()).contiguous()), bits), 0
    both = compact_scales(torch.stack([scale.float(), zero.float()]))
    return PackedWeight(codes, both[0].contiguous(), bits, zeros=both[1].contiguous()), off


def compact_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scales in the smallest dtype that holds them exactly: fp16 (the released model-level
    format), else bf16, else float32. Exactness beats size: a rounded scale changes the model."""
    for dtype in (torch.float16, torch.bfloat16):
        if scales.dtype == dtype:
            return scales
        cast = scales.to(dtype)
        if bool(torch.isfinite(cast).all()) and torch.equal(cast.to(scales.dtype), scales):
            return cast
    return scales.float()


def quantize_exact(
    weight: torch.Tensor, bits: int | None = None, *, path: str = "?", tensor: str = "?"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pack a dense weight whose every 128-group along K holds only ``{-s, +s}`` or ``{-s, 0, +s}``.

    This is a lossless re-encoding, not quantization: anything else is refused naming the
    first bad group. ``bits=None`` picks binary unless some group holds a zero.
    Returns ``(codes, scales, bits)``.
    """
    if weight.ndim != 2:
        raise BonsaiFormatError(path, tensor, f"expected a 2-D linear weight, got shape {list(weight.shape)}")
    n, k = weight.shape
    if k % GROUP_SIZE:
        raise BonsaiFormatError(path, tensor, f"in_features {k} is not a multiple of the group size {GROUP_SIZE}")
    w = weight.float().view(n, k // GROUP_SIZE, GROUP_SIZE)
    s = w.abs().amax(dim=-1)
    pos = w == s.unsqueeze(-1)
    neg = w == -s.unsqueeze(-1)
    zero = w == 0
    ok = pos | neg | zero
    if not bool(ok.all()):
        _raise_first_bad(~ok.all(dim=-1), path, tensor, "holds values other than {-s, 0, +s}")
    has_zero = (zero & (s.unsqueeze(-1) > 0)).any()
    if bits is None:
        bits = 2 if bool(has_zero) else 1
    _check_bits(bits)
    if bits == 1:
        bad = (zero & (s.unsqueeze(-1) > 0)).any(dim=-1)
        if bool(bad.any()):
            _raise_first_bad(bad, path, tensor, "holds a zero, which a binary weight cannot represent (is this a ternary checkpoint?)")
        q = pos.to(torch.uint8)  # -s -> 0, +s -> 1 (all-zero groups: s = 0, any code)
    else:
        q = (pos.to(torch.uint8) * 2) + zero.to(torch.uint8)  # -s -> 0, 0 -> 1, +s -> 2
        q = torch.where(s.unsqueeze(-1) > 0, q, torch.ones_like(q))
    return pack_codes(q.view(n, k), bits), compact_scales(s), bits


def all_finite(t: torch.Tensor) -> bool:
    """True when a float tensor holds no NaN and no infinity.

    One min/max reduction (NaN propagates through both), ~20x faster on CPU than materializing
    ``isfinite``: the dense tensors of Klein 4B (390 MB) are checked in well under a second."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_values(p: PackedWeight, path: object = "?", tensor: str | None = None) -> PackedWeight:
    """Refuse values a Bonsai layer cannot hold: a scale that is not finite, or (ternary) code 3.

    Readers call this once per layer as it is loaded from a file, so a corrupt or crafted file
    (a re-zipped pack, a flipped byte) fails naming the tensor instead of rendering NaN. Cost: one
    pass over the scales and, for ternary, a byte-wise test over the codes (no unpacking)."""
    if not all_finite(p.scales):
        n, g = (~torch.isfinite(p.scales)).nonzero()[0].tolist()
        raise BonsaiFormatError(path, tensor, f"scale at row {n}, group {g} is {p.scales[n, g].item()}; scales must be finite")
    if p.zeros is not None:
        if not all_finite(p.zeros):
            n, g = (~torch.isfinite(p.zeros)).nonzero()[0].tolist()
            raise BonsaiFormatError(path, tensor, f"zero at row {n}, group {g} is {p.zeros[n, g].item()}; zeros must be finite")
        # q * scale + zero is monotone in q: its ends (q = 0 and the largest code) bound every value
        top = p.scales.float() * MAX_CODE[p.bits] + p.zeros.float()
        if not all_finite(top):
            n, g = (~torch.isfinite(top)).nonzero()[0].tolist()
            raise BonsaiFormatError(
                path, tensor, f"row {n}, group {g}: {MAX_CODE[p.bits]} * scale + zero overflows float32; weights must be finite"
            )
    if p.bits == 2:
        # a 2-bit field holds 3 exactly when both of its bits are set
        both = p.codes & (p.codes >> 1) & 0x55
        if bool(both.any()):
            n, b = both.nonzero()[0].tolist()
            lane = (int(both[n, b]) & -int(both[n, b])).bit_length() // 2
            raise BonsaiFormatError(path, tensor, f"code 3 at row {n}, input {b * 4 + lane}: ternary codes are 0, 1, 2 only")
    return p


def check_dense_values(t: torch.Tensor, path: object = "?", tensor: str | None = None) -> torch.Tensor:
    """Refuse a dense float tensor holding NaN or an infinity (no Bonsai weight does)."""
    if t.is_floating_point() and not all_finite(t):
        idx = (~torch.isfinite(t)).nonzero()[0].tolist()  # [] for a 0-d tensor
        raise BonsaiFormatError(path, tensor, f"value at {idx} is {t[tuple(idx)].item()}; weights must be finite")
    return t


def _raise_first_bad(bad: torch.Tensor, path: str, tensor: str, what: str) -> None:
    idx = bad.nonzero()[0].tolist()
    row, group = idx[0], idx[1]
    raise BonsaiFormatError(
        path, tensor, f"row {row}, group {group} (inputs {group * GROUP_SIZE}..{group * GROUP_SIZE + GROUP_SIZE - 1}) {what}"
    )


@dataclass
class PackedWeight:
    """One quantized linear, packed (never a dense copy).

    ``zeros is None``: canonical, ``scales`` holds ``s`` and ``W = (q * STEP + OFFSET) * s``.
    ``zeros`` given: affine, ``scales``/``zeros`` hold the source's own pair and
    ``W = q * scales + zeros``. Either way :meth:`affine` gives ``(scale, zero)`` and
    :meth:`dequantize` evaluates :func:`dequantize_affine`."""

    codes: torch.Tensor  # uint8 [N, K*bits/8]
    scales: torch.Tensor  # [N, K/128]
    bits: int
    zeros: torch.Tensor | None = None  # [N, K/128], same dtype as scales; None = canonical

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.codes.dtype != torch.uint8 or self.codes.ndim != 2:
            raise ValueError(f"codes must be 2-D uint8, got {self.codes.dtype} {list(self.codes.shape)}")
        if self.scales.ndim != 2 or self.scales.shape[0] != self.codes.shape[0]:
            raise ValueError(f"scales {list(self.scales.shape)} do not match codes {list(self.codes.shape)}")
        if self.zeros is not None and (tuple(self.zeros.shape) != tuple(self.scales.shape) or not self.zeros.is_floating_point()):
            raise ValueError(f"zeros {self.zeros.dtype} {list(self.zeros.shape)} do not match scales {list(self.scales.shape)}")
        if self.codes.shape[1] * (8 // self.bits) != self.scales.shape[1] * GROUP_SIZE:
            raise ValueError(
                f"codes {list(self.codes.shape)} at {self.bits} bit imply K={self.codes.shape[1] * 8 // self.bits}, "
                f"scales {list(self.scales.shape)} imply K={self.scales.shape[1] * GROUP_SIZE}"
            )

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.scales.shape[1] * GROUP_SIZE

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def group_size(self) -> int:
        return GROUP_SIZE

    @property
    def is_affine(self) -> bool:
        return self.zeros is not None

    @property
    def code_map(self) -> tuple[int, int]:
        """``(step, offset)``: code ``q`` stands for ``q * step + offset`` times the group scale.
        Only meaningful for a canonical layer; kernels check :attr:`zeros` first."""
        return STEP[self.bits], OFFSET

    def affine(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` ``[N, K/128]`` in ``dtype`` with ``W = q * scale + zero``: the stored pair
        of an affine layer, :func:`affine` of ``s`` for a canonical one."""
        if self.zeros is not None:
            return self.scales.to(dtype), self.zeros.to(dtype)
        return affine(self.scales, self.bits, dtype)

    def max_abs(self) -> torch.Tensor:
        """float32 ``[N, K/128]``: the largest ``|W|`` in each group (at q = 0 or the largest code)."""
        if self.zeros is None:
            return self.scales.float().abs()
        scale, zero = self.affine(torch.float32)
        return torch.maximum(zero.abs(), (scale * MAX_CODE[self.bits] + zero).abs())

    @property
    def nbytes(self) -> int:
        extra = 0 if self.zeros is None else self.zeros.numel() * self.zeros.element_size()
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size() + extra

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale, zero = self.affine(torch.float32)
        return dequantize_affine(self.codes, scale, zero, self.bits, dtype)

    def as_affine(self) -> PackedWeight:
        """The same weight with an explicit ``(scale, zero)`` per group (exact: float32 when the
        canonical ``2 * s`` would not fit the scales' dtype)."""
        if self.zeros is not None:
            return self
        scale, zero = self.affine(torch.float32)
        both = compact_scales(torch.stack([scale, zero]))
        return PackedWeight(self.codes, both[0], self.bits, zeros=both[1])

    def to(self, device: torch.device | str) -> PackedWeight:
        zeros = None if self.zeros is None else self.zeros.to(device)
        return PackedWeight(self.codes.to(device), self.scales.to(device), self.bits, zeros=zeros)

    def split(self, sizes: list[int]) -> list[PackedWeight]:
        codes = self.codes.split(sizes, 0)
        scales = self.scales.split(sizes, 0)
        zeros = self.zeros.split(sizes, 0) if self.zeros is not None else [None] * len(codes)
        return [
            PackedWeight(c.contiguous(), s.contiguous(), self.bits, zeros=None if z is None else z.contiguous())
            for c, s, z in zip(codes, scales, zeros)
        ]
