"""Where compiled low-bit kernels and their tuning results live between runs, and prewarming.

gemlite autotunes every (shape, batch bucket) on first use (about 12 s for a new Klein shape
on an H100, 1.5-1.8 s per later batch size) and Triton compiles every kernel variant. Both
results are per GPU model and per software version, so they are kept in
``<root>/<gpu>-<cc>-torch<ver>-triton<ver>/`` with ``<root>`` = ``$BONSAI_CACHE_DIR`` or the
platform's user cache folder (``~/.cache/bonsai-image`` on Linux, ``~/Library/Caches/bonsai-image``
on macOS, ``%LOCALAPPDATA%\\bonsai-image\\Cache`` on Windows):

* ``triton/``: Triton's own cache (``TRITON_CACHE_DIR`` is set only if the user has not set it);
* ``gemlite-autotune-<gemlite version>.json``: gemlite's autotune table (``load_config``/``cache_config`` format);
* ``dispatch.json``: the measured backend-selection table (:mod:`bonsai_core.autotune_table`);
* ``dispatch-rules.json``: optional hand-written selection rules read by :mod:`bonsai_core.dispatch`
  before its static rules.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .klein import KLEIN_4B, KleinConfig, bfl_quantized_layers, diffusers_quantized_linears

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "BONSAI_CACHE_DIR"
GEMLITE_TABLE = "gemlite-autotune.json"
DISPATCH_TABLE = "dispatch.json"  # the measured per-GPU table (bonsai_core.autotune_table)
DISPATCH_RULES = "dispatch-rules.json"  # optional hand-written rules read by bonsai_core.dispatch

_triton_cache_set: set[str] = set()


def user_cache_root() -> Path:
    """``$BONSAI_CACHE_DIR`` or the platform's per-user cache folder for this project."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "bonsai-image" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "bonsai-image"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "bonsai-image"


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except Exception:  # triton missing or broken (Windows): the tag still has to be well defined
        return "none"


def device_tag(device: torch.device | str | None = None) -> str:
    """A folder name that changes whenever tuned kernels stop being valid: GPU model, compute
    capability, torch and triton versions."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_ver = torch.__version__.split("+")[0]
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        arch = f"gfx-{getattr(props, 'gcnArchName', '?')}" if torch.version.hip else f"sm{props.major}{props.minor}"
        tag = f"{props.name}-{arch}-torch{torch_ver}-triton{_triton_version()}"
    else:
        tag = f"{dev.type}-torch{torch_ver}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("_")


def cache_dir(device: torch.device | str | None = None, *, create: bool = True) -> Path:
    path = user_cache_root() / device_tag(device)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_triton_cache(device: torch.device | str | None = None) -> Path | None:
    """Point Triton's cache into the per-GPU folder unless the user already chose one.

    Must run before the first kernel compiles; Triton reads the variable at compile time.
    Returns the directory in use, or None if the user's own setting is kept.
    """
    if "TRITON_CACHE_DIR" in os.environ and os.environ["TRITON_CACHE_DIR"] not in _triton_cache_set:
        return None
    path = cache_dir(device) / "triton"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(path)
    _triton_cache_set.add(str(path))
    return path


def gemlite_table_path(device: torch.device | str | None = None, gemlite_version: str | None = None) -> Path:
    """gemlite's autotune table; per gemlite version, because tile configs of one release may
    name kernel parameters another release does not have."""
    if not gemlite_version:
        return cache_dir(device) / GEMLITE_TABLE
    stem, _, ext = GEMLITE_TABLE.rpartition(".")
    return cache_dir(device) / f"{stem}-{re.sub(r'[^A-Za-z0-9._-]+', '_', gemlite_version)}.{ext}"


def dispatch_table_path(device: torch.device | str | None = None) -> Path:
    return cache_dir(device, create=False) / DISPATCH_TABLE


def dispatch_rules_path(device: torch.device | str | None = None) -> Path:
    return cache_dir(device, create=False) / DISPATCH_RULES


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None (with one debug line) if it is missing or unreadable:
    caches are performance only, never a reason to fail."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache file %s: %s", path, e)
        return None


def klein_linear_shapes(cfg: KleinConfig = KLEIN_4B, naming: str = "diffusers") -> list[tuple[int, int]]:
    """Distinct ``(K, N)`` = (in_features, out_features) of the quantized linears.

    ``diffusers`` gives the five shapes of the released packs (separate q/k/v);
    ``bfl`` the six that ComfyUI runs (fused qkv, fused single-block linear1).
    """
    if naming == "diffusers":
        shapes = [(k, n) for n, k in diffusers_quantized_linears(cfg).values()]
    elif naming == "bfl":
        fused = diffusers_quantized_linears(cfg)
        shapes = []
        for parts in bfl_quantized_layers(cfg).values():
            n = sum(fused[p][0] for p in parts)
            shapes.append((fused[parts[0]][1], n))
    else:
        raise ValueError(f"naming must be 'diffusers' or 'bfl', got {naming!r}")
    return list(dict.fromkeys(shapes))


DEFAULT_PREWARM_M = (1, 16, 256, 1536, 4608)


def prewarm(
    shapes: Iterable[tuple[int, int]] | None = None,
    backend: str = "auto",
    *,
    bits: Sequence[int] = (1, 2),
    ms: Sequence[int] = DEFAULT_PREWARM_M,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> list[dict[str, Any]]:
    """Compile (and autotune) the low-bit kernels for ``shapes`` x ``bits`` x ``ms`` now, so the
    first image does not pay for it. Defaults to the Klein shapes ComfyUI runs. Results land in
    the per-GPU cache, so later processes start warm. Returns one record per call with the
    backend used and the seconds it took."""
    from .dispatch import lowbit_linear, select_backend

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = list(shapes) if shapes is not None else klein_linear_shapes(KLEIN_4B, "bfl")
    records: list[dict[str, Any]] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for k, n in shapes:
        for b in bits:
            codes = torch.randint(0, 256, (n, k * b // 8), dtype=torch.uint8, generator=gen).to(dev)
            scales = (torch.rand(n, k // 128, generator=gen) * 0.01 + 1e-3).half().to(dev)
            state: dict[str, Any] = {}
            for m in ms:
                name = select_backend(dev, dtype, b, m, backend, k=k, n=n)
                x = torch.zeros(m, k, dtype=dtype, device=dev)
                t0 = time.perf_counter()
                lowbit_linear(x, codes, scales, b, backend=name, state=state)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                dt = time.perf_counter() - t0
                records.append({"k": k, "n": n, "bits": b, "m": m, "backend": name, "seconds": round(dt, 3)})
                log.debug("prewarm %dx%d bits=%d M=%d on %s: %.2f s", k, n, b, m, name, dt)
            del codes, scales, state
    log.info("prewarmed %d low-bit kernel configurations (cache: %s)", len(records), cache_dir(dev))
    return records
