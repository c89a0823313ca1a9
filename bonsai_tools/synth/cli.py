"""``python -m bonsai_tools make-fixture``: write a synthetic transformer, or with ``--snapshot`` a
whole release-shaped snapshot (transformer + text encoder + VAE + pipeline files)."""

from __future__ import annotations

import argparse
import sys

from bonsai_core.atomic import check_output_path
from bonsai_core.formats import FORMAT_NAMES
from bonsai_core.packing import VARIANT_BITS

from .release import SNAPSHOT_LAYOUTS, make_release
from .seeded import SIZES
from .transformer import make_fixture

DEFAULT_FORMAT = "canonical"
DEFAULT_SNAPSHOT_FORMAT = "gemlite"  # the release every shipped workflow points at


def cmd_make_fixture(args: argparse.Namespace) -> int:
    fmt = args.format or (DEFAULT_SNAPSHOT_FORMAT if args.snapshot else DEFAULT_FORMAT)
    if args.snapshot and fmt not in SNAPSHOT_LAYOUTS:
        sys.stderr.write(
            f"make-fixture --snapshot: releases are published as {', '.join(SNAPSHOT_LAYOUTS)}; {fmt!r} is a single-file layout\n"
        )
        return 2
    check_output_path(args.out)  # refuse an existing folder before any work, as every writing command does
    if args.snapshot:
        out = make_release(args.variant, fmt, args.out, size=args.size, seed=args.seed, tokenizer_src=args.tokenizer)
    else:
        out = make_fixture(args.variant, args.size, fmt, args.seed, args.out)
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-fixture",
        help="write a deterministic synthetic transformer in any layout, or (--snapshot) a whole release folder",
        description="Random but valid weights, the same bytes for the same seed. Without --snapshot: the transformer only "
        f"(default format {DEFAULT_FORMAT}). With --snapshot: OUT becomes a release snapshot folder as the downloader "
        f"leaves it (default format {DEFAULT_SNAPSHOT_FORMAT}), loadable by the Bonsai pipeline loader.",
    )
    p.add_argument("--variant", choices=sorted(VARIANT_BITS), required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny: CPU-test geometry; full: the released Klein 4B geometry")
    p.add_argument("--format", choices=FORMAT_NAMES, default=None, help=f"layout (with --snapshot: one of {', '.join(SNAPSHOT_LAYOUTS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot", action="store_true", help="write a whole release (transformer + text encoder + VAE) into OUT")
    p.add_argument(
        "--tokenizer", default=None, metavar="DIR", help="with --snapshot: a Qwen tokenizer folder to ship beside the text encoder"
    )
    p.add_argument("out", help="output file or folder (must not exist as a folder)")
    p.set_defaults(func=cmd_make_fixture)
