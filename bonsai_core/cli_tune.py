"""``bonsai.py tune``: measure which low-bit backend is fastest on this GPU, once.

Backend selection in the runtime never measures on a user's prompt: it reads the shipped per-GPU
tables and static rules. This command is the explicit measurement: it times every available
backend on the Klein linear shapes (or ``--shapes``) x variants x token counts and writes the
winners to this GPU's ``dispatch.json`` in the per-GPU cache folder, which every later ComfyUI
process reads. ``--prewarm`` only compiles the kernels the current choices use (no measuring),
so the first image does not pay for compilation.

It ships with the runtime (the registry archive leaves the tooling package out, and the users who need
it -- another GPU than the measured ones -- install from the registry). The matmul backends are the
pack's ``kernels/``, which this package never imports: ``bonsai.py`` (or the tooling CLI) registers
them with :func:`bonsai_core.dispatch.register_backends` before the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import dispatch
from .dispatch import tune
from .dispatch.table import get_table
from .klein import VARIANT_BITS

_DTYPES = ("bfloat16", "float16", "float32")


def _shapes(text: str | None) -> list[tuple[int, int]] | None:
    """``"3072x9216,3072x3072"`` -> [(K, N), ...]; None = the Klein shapes ComfyUI runs."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        k, _, n = part.strip().partition("x")
        if not (k.isdigit() and n.isdigit()):
            raise argparse.ArgumentTypeError(f"shape {part!r} is not KxN (in_features x out_features)")
        out.append((int(k), int(n)))
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def cmd_tune(args: argparse.Namespace) -> int:
    import torch

    if not dispatch.backend_names():
        sys.stderr.write("tune needs the pack's matmul backends (kernels/): run it as `python <ComfyUI>/custom_nodes/<pack>/bonsai.py tune`\n")
        return 2
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    bits = tuple(VARIANT_BITS[v] for v in args.variants)
    shapes = _shapes(args.shapes)
    if args.prewarm:
        records = tune.prewarm(shapes, bits=bits, ms=args.m or tune.DEFAULT_PREWARM_M, device=device, dtype=dtype)
    else:
        records = tune.tune_device(
            device, shapes, bits=bits, ms=args.m or tune.DEFAULT_TUNE_M, dtype=dtype, include_fp8=not args.no_fp8, budget_s=args.budget_s
        )
    for r in records:
        sys.stdout.write(json.dumps(r) + "\n")
    what = "compiled" if args.prewarm else "measured"
    print(f"{what} {len(records)} configurations on {device}" + ("" if args.prewarm else f"; table: {get_table(device).path}"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure the fastest low-bit backend per Klein linear on this GPU (writes its dispatch table)")
    add_arguments(p)
    p.set_defaults(func=cmd_tune)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--shapes", default=None, metavar="KxN,...", help="linear shapes (default: the Klein 4B linears ComfyUI runs)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANT_BITS), default=sorted(VARIANT_BITS))
    p.add_argument("--m", type=_ints, default=None, metavar="M,...", help="token counts (default: 512^2 and 1024^2 images)")
    p.add_argument("--dtype", choices=_DTYPES, default="bfloat16")
    p.add_argument("--no-fp8", action="store_true", help="skip the FP8-activation backends (auto-fp8 choices)")
    p.add_argument("--budget-s", type=float, default=None, help="stop measuring after this many seconds (kept so far)")
    p.add_argument("--prewarm", action="store_true", help="only compile the kernels the current choices use; measure nothing")
