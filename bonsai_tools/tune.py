"""``python -m bonsai_tools tune``: the runtime's ``tune`` command (:mod:`bonsai_core.cli_tune`), with the
pack's ``kernels`` handed over. The command ships with the runtime (``bonsai.py tune``, which the
registry archive keeps); this entry stays for developers who run the tooling CLI."""

from __future__ import annotations

import argparse

from bonsai_core import dispatch
from bonsai_core.cli_tune import add_arguments, cmd_tune
from bonsai_image import kernels


def _run(args: argparse.Namespace) -> int:
    dispatch.register_backends(kernels.BACKENDS)  # the runtime never imports kernels: tooling hands them over
    return cmd_tune(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure the fastest low-bit backend per Klein linear on this GPU (writes its dispatch table)")
    add_arguments(p)
    p.set_defaults(func=_run)
