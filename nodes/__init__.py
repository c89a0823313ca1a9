"""ComfyUI nodes of the Bonsai Image pack.

Every module here that defines nodes exports ``NODES: list[type[io.ComfyNode]]``; the pack's root
``__init__`` imports each module on its own (a module whose optional dependency is missing only
loses its own nodes) and registers the union through the V3 ``comfy_entrypoint``. Modules whose
name starts with ``_`` and the loaders' helpers (:mod:`.ops`, :mod:`.folders`, :mod:`.model_sources`,
:mod:`.te_clip`, :mod:`.installed`) are not scanned. :mod:`.folders` is the one place names become paths.

Import the core relatively (``from ..bonsai_core import ...``): the repository root is the custom
node package, and putting it on ``sys.path`` would shadow ComfyUI's own ``nodes`` module.
"""
