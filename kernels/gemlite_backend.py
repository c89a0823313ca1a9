"""gemlite backend (CUDA sm80+): ``GemLiteLinearTriton`` A16W1 / A16W2, built straight from the
weight object (no file re-read, no unpack/repack of the weight).

How the layer is built (gemlite 0.5.1.post1 and 0.6.x):

* ``W_q = codes.T`` (uint8 ``[K*bits/8, N]``, LSB-first along K, packing bitwidth 8, 8/bits
  elements per byte): the canonical layout *is* gemlite's, only transposed (gemlite's kernels
  need N contiguous for coalesced loads). The transposed copy has the size of ``codes``.
* ``scales``/``zeros``: the weight's own ``affine(float16)`` form transposed to ``[K/g, N]``
  (``W_group_mode`` 4: ``W = q * scale + zero``); exact in fp16 whenever the scales are.
* ``metadata`` and ``meta_scale`` are never written by hand: they are taken from a tiny layer
  that gemlite's own ``pack()`` builds once per (bits, group size) with the same dtypes, so they
  are whatever the installed gemlite writes (0.6 adds ``meta_scale``; for these integer layers
  it writes 0.0, a value its kernels only read for NVFP4). The tensors then go in through
  ``load_state_dict``, the path released packs use, present in both versions.

Numerics: gemlite's kernels cast the dequantized tile to the *input* dtype before ``tl.dot``.
With bf16 input, fp16-exact scales would be rounded to bf16, so activations always enter as
fp16 (bf16 -> fp16 is exact for |x| in [6.1e-5, 65504]: fp16 has more mantissa bits; beyond
65504 it overflows, the same limit as the released fp16-only CUDA runtime). fp32 input is
rounded to fp16 (documented loss; the dispatcher never picks gemlite for fp32 on its own).
Accumulation is fp32 and the output is written as fp32 (so split-K atomics add in fp32 and
outputs beyond the fp16 range survive), then cast to the input dtype.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .base import BackendUnavailable, LowBitBackend, PackedLinearWeight

log = logging.getLogger(__name__)

# gemlite DType enum value of float16 (gemlite/dtypes.py, identical in 0.5.1 and 0.6); part of
# the autotune-table signature gemlite itself builds
_FP16 = 1

ENV_AUTOTUNE_MODE = "BONSAI_GEMLITE_AUTOTUNE"  # gemlite's autotune effort: "fast" (its default), "max" or "default" (no search)
_mode_applied = False


def _import_gemlite() -> Any:
    """Import gemlite, turning every way that can fail into BackendUnavailable.

    Importing gemlite queries the CUDA device and imports Triton, so it must never happen at
    module import time of this file.
    """
    if importlib.util.find_spec("gemlite") is None:
        raise BackendUnavailable("the gemlite package is not installed (pip install 'gemlite>=0.5.1')")
    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailable("Triton is not installed (on Windows: pip install triton-windows)")
    try:
        import gemlite
        from gemlite.core import GemLiteLinearTriton  # noqa: F401  (fails on a broken install)
    except Exception as e:  # gemlite's import runs CUDA/Triton code; any failure means "not here"
        raise BackendUnavailable(f"gemlite failed to import: {type(e).__name__}: {e}") from e
    global _mode_applied
    mode = os.environ.get(ENV_AUTOTUNE_MODE, "").strip().lower()
    if mode and not _mode_applied:
        # must precede the first kernel launch: set_autotune reloads gemlite's kernel modules
        if mode not in ("fast", "max", "default"):
            raise BackendUnavailable(f"${ENV_AUTOTUNE_MODE}={mode!r}: use fast, max or default")
        gemlite.set_autotune(mode)
        log.info("gemlite autotune mode: %s", mode)
    _mode_applied = True
    return gemlite


def gemlite_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("gemlite")
    except Exception:
        return None


class _AutotuneTable:
    """gemlite's autotune table persisted in the per-GPU cache folder (the context's ``cache_dir``).

    Loaded once per device before the first gemlite call; after any call that had to autotune
    a new (matmul kind, batch bucket, N, K, bits), the merged table is written back atomically.
    Without a cache folder nothing is persisted.
    """

    def __init__(self) -> None:
        self.paths: dict[str, Path | None] = {}  # device -> table path, resolved once (this runs per call)
        self.seen: set[tuple[Any, ...]] = set()

    def path(self, device: torch.device, cache_dir: Callable[[torch.device], Path | None]) -> Path | None:
        key = str(device)
        if key not in self.paths:
            folder = cache_dir(device)
            version = re.sub(r"[^A-Za-z0-9._-]+", "_", gemlite_version() or "unknown")
            # per gemlite version: tile configs of one release may name parameters another lacks
            self.paths[key] = folder / f"gemlite-autotune-{version}.json" if folder is not None else None
        return self.paths[key]

    def load(self, gemlite: Any, device: torch.device, cache_dir: Callable[[torch.device], Path | None]) -> None:
        if str(device) in self.paths:
            return
        path = self.path(device, cache_dir)
        if path is not None and path.is_file() and _readable_json(path):
            gemlite.core.GemLiteLinearTriton.load_config(str(path), print_error=False)
            log.info("loaded gemlite autotune table %s", path)

    def signature(self, gemlite: Any, m: int, n: int, k: int, bits: int, group: int) -> tuple[str, str]:
        core = gemlite.core
        kind = core.get_matmul_type(m, bits)
        closest = gemlite.triton_kernels.utils.get_closest_m(m)
        return kind, str((closest, n, k, group, 8 // bits, _FP16 * 100 + bits))

    def is_tuned(self, gemlite: Any, kind: str, sig: str) -> bool:
        return (kind, sig) in self.seen or sig in gemlite.core.GEMLITE_TRITON_CONFIG_CACHE.get(kind, {})

    def save(self, gemlite: Any, path: Path | None) -> None:
        if path is None:
            return
        cls = gemlite.core.GemLiteLinearTriton
        if path.is_file():  # merge what other processes wrote meanwhile
            cls.load_config(str(path), print_error=False)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            cls.cache_config(str(tmp))
            os.replace(tmp, path)  # atomic: a reader never sees half a table
        except OSError as e:
            log.warning("could not save the gemlite autotune table to %s: %s", path, e)
        finally:
            tmp.unlink(missing_ok=True)


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable gemlite autotune table %s: %s", path, e)
        return False


_TABLE = _AutotuneTable()


def _layer_kwargs(gemlite: Any, weight: PackedLinearWeight, in_features: int, out_features: int) -> dict[str, Any]:
    return {
        "W_nbits": weight.bits,
        "group_size": weight.group_size,
        "in_features": in_features,
        "out_features": out_features,
        "input_dtype": gemlite.DType.FP16,
        "output_dtype": gemlite.DType.FP32,
        "acc_dtype": gemlite.DType.FP32,
    }


_TEMPLATES: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
_TEMPLATE_ROWS = 16


def gemlite_metadata(gemlite: Any, weight: PackedLinearWeight) -> dict[str, torch.Tensor]:
    """``metadata`` (and ``meta_scale`` where the installed gemlite has one) exactly as gemlite's
    own ``pack()`` writes them for a layer like ``weight``: packed once, on a tiny CPU layer
    (gemlite's torch packing path), per (bits, group size)."""
    key = (weight.bits, weight.group_size)
    if key not in _TEMPLATES:
        # two groups along K: with one group per row, pack() would take the scales for
        # channel-wise ones and write another mode
        k = 2 * weight.group_size
        step, offset = weight.code_map
        tiny = gemlite.core.GemLiteLinearTriton(**_layer_kwargs(gemlite, weight, k, _TEMPLATE_ROWS))
        q = torch.zeros(_TEMPLATE_ROWS, k, dtype=torch.uint8)
        scale = torch.full((_TEMPLATE_ROWS, 2), float(step), dtype=torch.float16)
        # pack()'s fma mode stores zero = -z * scale; z = -offset / step gives zero = offset * s
        z = torch.full((_TEMPLATE_ROWS, 2), -offset / step, dtype=torch.float16)
        tiny.pack(q, scale, z, fma_mode=True, packing_bitwidth=8)
        sd = tiny.state_dict()
        _TEMPLATES[key] = {k: sd[k].detach().clone() for k in ("metadata", "meta_scale") if k in sd}
    return _TEMPLATES[key]


def build_gemlite_layer(weight: PackedLinearWeight) -> Any:
    """A ``GemLiteLinearTriton`` holding exactly ``weight``, on ``weight.codes.device``."""
    gemlite = _import_gemlite()
    codes = weight.codes
    device = codes.device
    scale, zero = weight.affine(torch.float16)
    w_scale = scale.t().contiguous().to(device)  # [K/g, N]
    w_zero = zero.t().contiguous().to(device)
    if not (bool(torch.isfinite(w_scale).all()) and bool(torch.isfinite(w_zero).all())):
        raise BackendUnavailable("a scale does not fit in float16; gemlite runs this layer in fp16")
    n, k = weight.out_features, weight.in_features
    layer = gemlite.core.GemLiteLinearTriton(**_layer_kwargs(gemlite, weight, k, n))
    sd: dict[str, torch.Tensor] = {
        "W_q": codes.t().contiguous(),
        "scales": w_scale,
        "zeros": w_zero,
        "orig_shape": torch.tensor([n, k], dtype=torch.int32, device=device),
    }
    sd.update({name: t.to(device) for name, t in gemlite_metadata(gemlite, weight).items()})
    layer.load_state_dict(sd)
    return layer


class GemliteBackend(LowBitBackend):
    name = "gemlite"

    def check(self, device: torch.device, dtype: torch.dtype, bits: int) -> None:
        if device.type != "cuda":
            raise BackendUnavailable(f"gemlite needs a CUDA device, the input is on {device.type}")
        if torch.version.hip:
            raise BackendUnavailable("gemlite's Bonsai path is only validated on NVIDIA CUDA, not ROCm")
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch reports no usable CUDA device")
        cc = torch.cuda.get_device_capability(device)
        if cc < (8, 0):
            raise BackendUnavailable(f"gemlite needs compute capability 8.0+ (Ampere or newer), this GPU is {cc[0]}.{cc[1]}")
        if bits not in (1, 2):
            raise BackendUnavailable(f"bits={bits} is not binary (1) or ternary (2)")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise BackendUnavailable(f"activation dtype {dtype} is not float16/bfloat16/float32")
        _import_gemlite()  # the runtime points Triton's cache folder before calling check()

    def _layer(self, weight: PackedLinearWeight, state: dict[str, Any]) -> Any:
        codes, scales = weight.codes, weight.scales
        key = (codes.device, codes.data_ptr(), scales.data_ptr(), tuple(codes.shape), weight.bits)
        cached = state.get("gemlite")
        if cached is None or cached[0] != key:
            state["gemlite"] = (key, build_gemlite_layer(weight))
        return state["gemlite"][1]

    def matmul(self, x2d: torch.Tensor, weight: PackedLinearWeight, state: dict[str, Any]) -> torch.Tensor:
        gemlite = _import_gemlite()
        device = x2d.device
        _TABLE.load(gemlite, device, self.context.cache_dir)  # once per device
        layer = self._layer(weight, state)
        m, k = x2d.shape
        n, bits = weight.out_features, weight.bits
        kind, sig = _TABLE.signature(gemlite, m, n, k, bits, weight.group_size)
        fresh = not _TABLE.is_tuned(gemlite, kind, sig)
        if fresh:
            variant = "binary" if bits == 1 else "ternary"
            log.info("compiling low-bit kernels for %d×%d (%s, %s, M≈%d), first use only", k, n, variant, kind, m)
            t0 = time.perf_counter()
        with torch.cuda.device(device):
            y = layer(x2d.to(torch.float16))
        if fresh:
            torch.cuda.synchronize(device)
            _TABLE.seen.add((kind, sig))
            path = _TABLE.path(device, self.context.cache_dir)
            _TABLE.save(gemlite, path)
            log.info("compiled %d×%d %s in %.1f s (cached in %s)", k, n, kind, time.perf_counter() - t0, path)
        return y.to(x2d.dtype)
