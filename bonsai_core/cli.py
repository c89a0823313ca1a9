"""``python -m bonsai_core <command>``: each command lives in its own module, imported lazily
so that ``inspect`` never pays for (or fails on) kernel or download dependencies.

A command module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(args) -> int>`` via ``set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .atomic import exit_on_termination
from .errors import BonsaiFormatError

# command name -> module (relative to this package) that registers it
COMMANDS: dict[str, str] = {
    "inspect": ".cli_formats",
    "convert": ".cli_formats",
    "dequantize": ".cli_formats",
    "download": ".download",
}

# Developer commands that live in the tooling package now. The runtime must not import it (a user's
# ComfyUI never needs it), so these names only answer where they went.
MOVED_TO_TOOLS: frozenset[str] = frozenset({"make-fixture", "bench-linear", "bench-model", "bench-lora"})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bonsai_core", description="Bonsai Image 4B weight tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen: set[str] = set()
    for name, module in COMMANDS.items():
        if module in seen or (only is not None and name != only):
            continue
        seen.add(module)
        importlib.import_module(module, __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the command asked for; --help imports all.
    only = next((a for a in argv if not a.startswith("-")), None)
    if only in MOVED_TO_TOOLS:
        sys.stderr.write(f"'{only}' moved: run `python -m bonsai_tools {only}` from the pack folder\n")
        return 2
    parser = build_parser(only if only in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with exit_on_termination():  # SIGTERM/SIGHUP unwind like Ctrl-C, so temporaries are removed
            return int(args.func(args) or 0)
    except BonsaiFormatError as e:
        logging.getLogger("bonsai_core").error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
