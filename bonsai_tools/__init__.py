"""Tooling around the Bonsai Image pack: synthetic releases, benchmarks, the workflow builder.

Nothing a user's ComfyUI runs lives here, and the runtime (``bonsai_core``, ``kernels``, ``nodes``)
never imports this package: tooling may boot ComfyUI, fake packages and print, the runtime may not.
Entry point: ``python -m bonsai_tools <command>`` (see :mod:`bonsai_tools.cli`).
"""
