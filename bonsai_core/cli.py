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
from .escape import escaping_logger

# command name -> module (relative to this package) that registers it
COMMANDS: dict[str, str] = {
    "inspect": ".cli_formats",
    "convert": ".cli_formats",
    "dequantize": ".cli_formats",
    "download": ".download",
    "tune": ".cli_tune",
}

# Developer commands that live in the tooling package now. The runtime must not import it (a user's
# ComfyUI never needs it), so these names only answer where they went.
MOVED_TO_TOOLS: frozenset[str] = frozenset({"make-fixture", "bench-linear", "bench-model", "bench-lora", "bench-prompt", "build-workflows"})
PROG = "python -m bonsai_core"


def build_parser(
    only: str | None = None,
    *,
    commands: dict[str, str] = COMMANDS,
    package: str = __package__,
    prog: str = PROG,
    description: str = "Bonsai Image 4B weight tools",
) -> argparse.ArgumentParser:
    """The parser with the subcommands of ``commands`` (all of them, or only ``only``'s module)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen: set[str] = set()
    for name, module in commands.items():
        if module in seen or (only is not None and name != only):
            continue
        seen.add(module)
        importlib.import_module(module, package).register(sub)
    return parser


def run_commands(argv: list[str], *, commands: dict[str, str], package: str, prog: str, description: str) -> int:
    """Parse ``argv`` against ``commands`` (importing only the module of the command asked for;
    ``--help`` imports all) and run it. A format error is one logged line and exit 2; SIGTERM/SIGHUP
    unwind like Ctrl-C so that atomic writes remove their temporaries. Shared with the tooling CLI."""
    only = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only if only in commands else None, commands=commands, package=package, prog=prog, description=description)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with exit_on_termination():
            return int(args.func(args) or 0)
    except BonsaiFormatError as e:
        escaping_logger(package).error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The runtime CLI; ``prog`` is how the user started it (``bonsai.py`` passes its own command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = next((a for a in argv if not a.startswith("-")), None)
    if only in MOVED_TO_TOOLS:
        sys.stderr.write(
            f"'{only}' is a developer command of the tooling package (a git checkout, not the registry archive): "
            f"run `python <pack folder>/bonsai_tools {only}` from any folder\n"
        )
        return 2
    return run_commands(argv, commands=COMMANDS, package=__package__, prog=prog, description="Bonsai Image 4B weight tools")
