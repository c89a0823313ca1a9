"""gemlite backend (CUDA sm80+): ``GemLiteLinearTriton`` A16W1 / A16W2, group 128, built
straight from the canonical packed tensors (no file re-read, no unpack/repack round trip).

How the layer is built (gemlite 0.5.1.post1 and 0.6.x, see docs/shared formats.md §4):

* ``W_q = codes.T`` (uint8 ``[K*bits/8, N]``, LSB-first along K, packing bitwidth 8, 8/bits
  elements per byte): the canonical layout *is* gemlite's, only transposed. The transposed copy
  has the size of ``codes`` (gemlite's kernels need N contiguous for coalesced loads).
* ``W_group_mode 4``: ``W = q * scale + zero`` with fp16 ``[K/128, N]`` tables;
  binary ``scale = 2s, zero = -s``; ternary ``scale = s, zero = -s``. Both are exact in fp16
  whenever ``s`` is (``2s`` only moves the exponent) and ``q*scale + zero`` is exact.
* The tensors go in through ``GemLiteLinearTriton.load_state_dict`` (the path the released
  packs use), which exists in both versions; 0.6 added a ``meta_scale`` buffer, which is passed
  (0.0, unused for integer weights) only when the layer has one.

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
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..kernel_cache import ensure_triton_cache, gemlite_table_path, read_json
from .base import BackendUnavailable, LowBitBackend

log = logging.getLogger(__name__)

# gemlite DType enum values (gemlite/dtypes.py, identical in 0.5.1 and 0.6)
_FP32, _FP16 = 0, 1
_GROUP = 128


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
    """gemlite's autotune table persisted in the per-GPU cache folder.

    Loaded once per device before the first gemlite call; after any call that had to autotune
    a new (matmul kind, batch bucket, N, K, bits), the merged table is written back atomically.
    """

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}  # device -> table path, resolved once (this runs per call)
        self.seen: set[tuple[Any, ...]] = set()

    def path(self, device: torch.device) -> Path:
        key = str(device)
        if key not in self.paths:
            self.paths[key] = gemlite_table_path(device, gemlite_version())
        return self.paths[key]

    def load(self, gemlite: Any, device: torch.device) -> None:
        if str(device) in self.paths:
            return
        path = self.path(device)
        if path.is_file() and read_json(path) is not None:
            gemlite.core.GemLiteLinearTriton.load_config(str(path), print_error=False)
            log.info("loaded gemlite autotune table %s", path)

    def signature(self, gemlite: Any, m: int, n: int, k: int, bits: int) -> tuple[str, str]:
        core = gemlite.core
        kind = core.get_matmul_type(m, bits)
        closest = gemlite.triton_kernels.utils.get_closest_m(m)
        return kind, str((closest, n, k, _GROUP, 8 // bits, _FP16 * 100 + bits))

    def is_tuned(self, gemlite: Any, kind: str, sig: str) -> bool:
        return (kind, sig) in self.seen or sig in gemlite.core.GEMLITE_TRITON_CONFIG_CACHE.get(kind, {})

    def save(self, gemlite: Any, device: torch.device) -> None:
        from ..atomic import atomic_path

        path = self.path(device)
        cls = gemlite.core.GemLiteLinearTriton
        if path.is_file():  # merge what other processes wrote meanwhile
            cls.load_config(str(path), print_error=False)
        try:
            with atomic_path(path) as tmp:
                cls.cache_config(str(tmp))
        except OSError as e:
            log.warning("could not save the gemlite autotune table to %s: %s", path, e)


_TABLE = _AutotuneTable()


def build_gemlite_layer(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> Any:
    """A ``GemLiteLinearTriton`` holding exactly the canonical weight, on ``codes.device``."""
    gemlite = _import_gemlite()
    n, kb = codes.shape
    k = kb * 8 // bits
    s = scales.to(device=codes.device, dtype=torch.float32)
    scale = (2.0 * s) if bits == 1 else s
    w_scale = scale.t().contiguous().to(torch.float16)  # [K/128, N]
    w_zero = (-s).t().contiguous().to(torch.float16)
    if not (bool(torch.isfinite(w_scale).all()) and bool(torch.isfinite(w_zero).all())):
        raise BackendUnavailable("a scale does not fit in float16; gemlite runs this layer in fp16")
    layer = gemlite.core.GemLiteLinearTriton(
        W_nbits=bits,
        group_size=_GROUP,
        in_features=k,
        out_features=n,
        input_dtype=gemlite.DType.FP16,
        output_dtype=gemlite.DType.FP32,
        acc_dtype=gemlite.DType.FP32,
    )
    metadata = [
        0,  # scaled_activations
        bits,  # W_nbits
        _GROUP,  # group_size
        (1 << bits) - 1,  # unpack_mask
        8 // bits,  # elements_per_sample (packing bitwidth 8)
        _FP16,  # input_dtype
        _FP32,  # output_dtype
        _FP32,  # acc_dtype
        _FP16,  # meta_dtype (dtype of scales/zeros)
        0,  # channel_scale_mode
        4,  # W_group_mode: W = q * scale + zero
        1,  # data_contiguous
    ]
    sd: dict[str, torch.Tensor] = {
        "W_q": codes.t().contiguous(),
        "scales": w_scale,
        "zeros": w_zero,
        "metadata": torch.tensor(metadata, dtype=torch.int32, device=codes.device),
        "orig_shape": torch.tensor([n, k], dtype=torch.int32, device=codes.device),
    }
    if isinstance(getattr(layer, "meta_scale", None), torch.Tensor):  # gemlite >= 0.6
        sd["meta_scale"] = torch.tensor(0.0, dtype=torch.float32, device=codes.device)
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
        ensure_triton_cache(device)  # before gemlite's import can compile anything
        _import_gemlite()

    def _layer(self, codes: torch.Tensor, scales: torch.Tensor, bits: int, state: dict[str, Any]) -> Any:
        key = (codes.device, codes.data_ptr(), scales.data_ptr(), tuple(codes.shape), bits)
        cached = state.get("gemlite")
        if cached is None or cached[0] != key:
            state["gemlite"] = (key, build_gemlite_layer(codes, scales, bits))
        return state["gemlite"][1]

    def matmul(self, x2d: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, state: dict[str, Any]) -> torch.Tensor:
        gemlite = _import_gemlite()
        device = x2d.device
        _TABLE.load(gemlite, device)  # once per device (check() already pointed Triton's cache)
        layer = self._layer(codes, scales, bits, state)
        m, k = x2d.shape
        n = codes.shape[0]
        kind, sig = _TABLE.signature(gemlite, m, n, k, bits)
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
            _TABLE.save(gemlite, device)
            log.info("compiled %d×%d %s in %.1f s (cached in %s)", k, n, kind, time.perf_counter() - t0, _TABLE.path(device).parent)
        return y.to(x2d.dtype)
