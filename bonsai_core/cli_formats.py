"""CLI commands ``inspect``, ``convert`` and ``dequantize`` (``make-fixture`` is tooling: ``python -m bonsai_tools``)."""

from __future__ import annotations

import argparse
import json
import sys

from .escape import escape_name
from .formats.registry import FORMAT_NAMES
from .packing import VARIANT_BITS


def cmd_inspect(args: argparse.Namespace) -> int:
    from .formats.detect import open_checkpoint

    ckpt = open_checkpoint(args.path, args.variant)
    info = ckpt.summary()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    cfg = info.pop("transformer_config")
    for k, v in info.items():
        print(f"{escape_name(k):18} {escape_name(v)}")  # names and metadata come from the file
    print("transformer_config " + ", ".join(f"{escape_name(k)}={escape_name(v)}" for k, v in cfg.items()))  # type: ignore[union-attr]
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(args.src, args.dst, args.to, args.variant)
    print(escape_name(out))
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from .convert import dequantize_checkpoint

    print(escape_name(dequantize_checkpoint(args.src, args.dst, args.variant)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    variants = sorted(VARIANT_BITS)
    p = sub.add_parser("inspect", help="describe a Bonsai transformer (any layout)")
    p.add_argument("path", help="file, pack folder or released snapshot folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--variant", choices=variants, help="fail unless the checkpoint is this variant")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert between layouts (default: to the canonical single file)")
    p.add_argument("src")
    p.add_argument("dst", help="output file (canonical, gguf, or .safetensors for mlx/unpacked) or snapshot folder")
    p.add_argument("--to", choices=FORMAT_NAMES, default="canonical")
    p.add_argument("--variant", choices=variants, help="fail unless the source is this variant")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("dequantize", help="write dense bf16 safetensors with ComfyUI key names")
    p.add_argument("src")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--variant", choices=variants, help="fail unless the source is this variant")
    p.set_defaults(func=cmd_dequantize)
