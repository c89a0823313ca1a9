"""``python -m bonsai_tools <command>``: developer commands (fixtures, benchmarks, workflow builder).

Like the runtime CLI (whose dispatcher it reuses: ``bonsai_core.cli.run_commands``), each command lives in its own module, imported only when asked for, so a
command whose dependencies are missing (ComfyUI, a GPU stack) cannot break the others. A command
module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(args) -> int>`` via ``set_defaults``.
"""

from __future__ import annotations

import argparse
import sys

from bonsai_core.cli import build_parser as _build_parser
from bonsai_core.cli import run_commands

PROG = "python -m bonsai_tools"
DESCRIPTION = "Bonsai Image developer tools"

# command name -> module (relative to this package) that registers it
COMMANDS: dict[str, str] = {
    "bench-linear": ".bench.linear",
    "bench-model": ".bench.model",
    "bench-lora": ".bench.lora",
    "bench-prompt": ".bench.prompt",
    "bench-profile": ".bench.profile_prompt",
    "build-workflows": ".workflows.build",
    "make-fixture": ".synth.cli",
    "tune": ".tune",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    return _build_parser(only, commands=COMMANDS, package=__package__, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_commands(argv, commands=COMMANDS, package=__package__, prog=PROG, description=DESCRIPTION)
