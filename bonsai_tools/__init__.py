"""Tooling around the Bonsai Image pack: synthetic releases, benchmarks, the workflow builder.

Nothing a user's ComfyUI runs lives here, and the runtime (``bonsai_core``, ``kernels``, ``nodes``)
never imports this package: tooling may boot ComfyUI, fake packages and print, the runtime may not.
Entry point: ``python -m bonsai_tools <command>`` (see :mod:`bonsai_tools.cli`).
"""

from .pack_import import isolate_pack

# Tooling runs with the repository on sys.path: its kernels/ must be bonsai_image.kernels, never the
# top-level "kernels" that transformers imports from Hugging Face (see pack_import).
isolate_pack()
