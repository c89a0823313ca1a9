"""``bench-model --cold``: the first 1024² image in fresh processes (empty, then persisted caches)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .model import REPO, build_model, setup_comfy, synthetic_state_dict
from .model_timing import euler_latents

log = logging.getLogger(__name__)


def cold_start(args: argparse.Namespace, variant: str, backend: str) -> dict[str, Any]:
    """First 1024^2 image (build + ``--euler-steps`` steps) in fresh processes: empty caches, then
    the caches the first one left (Bonsai dispatch table + Triton kernels)."""
    out: dict[str, Any] = {"variant": variant, "backend": backend}
    with tempfile.TemporaryDirectory(prefix="bonsai-cold-") as tmp:
        env = {**os.environ, "BONSAI_CACHE_DIR": str(Path(tmp) / "bonsai"), "TRITON_CACHE_DIR": str(Path(tmp) / "triton")}
        for label in ("empty_caches", "persisted_caches"):
            cmd = [sys.executable, "-m", "bonsai_tools", "bench-model", "--first-image", variant, "--backends", backend]
            if args.comfyui:
                cmd += ["--comfyui", args.comfyui]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.cold_timeout)
            wall = time.perf_counter() - t0
            rec: dict[str, Any] = {"process_wall_s": round(wall, 2), "rc": r.returncode}
            line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
            if line:
                rec.update(json.loads(line))
            else:
                rec["stderr_tail"] = r.stderr[-2000:]
            out[label] = rec
            log.info("cold start %s %s %s: %s", variant, backend, label, rec)
    return out


def first_image(args: argparse.Namespace) -> int:
    """Child of :func:`cold_start`: prints one JSON line with the phases' seconds."""
    import torch

    t0 = time.perf_counter()
    ops_mod = setup_comfy(args.comfyui)
    device = torch.device("cuda")
    t_import = time.perf_counter()
    bits = {"binary": 1, "ternary": 2}[args.first_image]
    packed = synthetic_state_dict(bits, device)
    dm = build_model(packed, ops_mod.make_bonsai_ops(args.backends[0], bits), device)
    torch.cuda.synchronize()
    t_model = time.perf_counter()
    lat = euler_latents(dm, 1024, device, args.euler_steps)
    torch.cuda.synchronize()
    t_img = time.perf_counter()
    rec = {
        "import_s": round(t_import - t0, 2),
        "build_s": round(t_model - t_import, 2),
        "first_image_s": round(t_img - t_model, 2),
        "total_s": round(t_img - t0, 2),
        "finite": bool(torch.isfinite(lat).all()),
    }
    sys.stdout.write(json.dumps(rec) + "\n")
    return 0
