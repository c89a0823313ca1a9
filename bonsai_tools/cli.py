"""``python -m bonsai_tools <command>``: developer commands (fixtures, benchmarks, workflow builder).

Like the runtime CLI, each command lives in its own module, imported only when asked for, so a
command whose dependencies are missing (ComfyUI, a GPU stack) cannot break the others. A command
module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(args) -> int>`` via ``set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bonsai_core.atomic import exit_on_termination
from bonsai_core.errors import BonsaiFormatError

# command name -> module (relative to this package) that registers it
COMMANDS: dict[str, str] = {
    "bench-linear": ".bench.linear",
    "bench-model": ".bench.model",
    "bench-lora": ".bench.lora",
    "bench-prompt": ".bench.prompt",
    "build-workflows": ".workflows.build",
    "make-fixture": ".synth.cli",
    "tune": ".tune",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bonsai_tools", description="Bonsai Image developer tools")
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
    only = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only if only in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with exit_on_termination():  # SIGTERM/SIGHUP unwind like Ctrl-C, so temporaries are removed
            return int(args.func(args) or 0)
    except BonsaiFormatError as e:
        logging.getLogger("bonsai_tools").error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
