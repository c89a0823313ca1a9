"""Bonsai Image for ComfyUI: binary/ternary FLUX.2 Klein 4B with packed weights and stock sockets.

ComfyUI imports this file as the custom node package (``custom_nodes/<pack>/__init__.py``) and
calls :func:`comfy_entrypoint` (the V3 API). There is deliberately no ``NODE_CLASS_MAPPINGS``:
ComfyUI would take the V1 path and ignore the entry point.

Each module in ``nodes/`` is imported separately; one that fails (an optional backend or package
missing, a bug) is logged with the reason and only its own nodes are missing. The core library
``bonsai_core`` imports nothing from ComfyUI; ``nodes/`` needs ComfyUI, and this file defines the
entry point only when ComfyUI is importable (pytest also imports it while collecting the repo).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

log = logging.getLogger("bonsai_image")

# Not node modules: helpers of the loaders (operations, their custom op and weight view, optional ComfyUI
# helpers, graph replay, folder service, model sources, CLIP building, what is installed and the notice's route).
_NOT_NODE_MODULES = frozenset(
    {"ops", "lowbit_op", "packed_weight", "comfy_features", "graph_replay", "folders", "model_sources", "te_clip", "installed"}
)

IMPORT_ERRORS: dict[str, str] = {}  # node module -> why it did not load (shown in the log, kept for tests)
# Frontend extension served by ComfyUI at /extensions/<pack folder>/: the on-open notice for model
# folders a workflow needs that are not downloaded yet (web/bonsai_missing_models.js).
WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension
except ImportError:
    # Imported outside ComfyUI (pytest collecting the repository, packaging tools): there is
    # nothing to register, and bonsai_core stays usable on its own.
    ComfyExtension = None


def _node_modules() -> list[str]:
    from . import nodes as nodes_pkg

    names = [m.name for m in pkgutil.iter_modules(nodes_pkg.__path__)]
    return sorted(n for n in names if not n.startswith("_") and n not in _NOT_NODE_MODULES)


def gather_nodes() -> list[Any]:
    """Node classes (``io.ComfyNode``) from every importable ``nodes/*`` module, in module order, without duplicates."""
    from . import nodes as nodes_pkg

    found: list[Any] = []
    for name in _node_modules():
        try:
            module = importlib.import_module(f"{nodes_pkg.__name__}.{name}")
        except Exception as e:  # one broken optional part must not hide the rest of the pack
            IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
            log.error("Bonsai Image: nodes/%s.py could not be imported, its nodes are unavailable: %s: %s", name, type(e).__name__, e)
            log.debug("import failure of nodes/%s.py", name, exc_info=True)
            continue
        IMPORT_ERRORS.pop(name, None)
        for node in getattr(module, "NODES", ()):
            if node not in found and _schema_builds(name, node):
                found.append(node)
    return found


def _schema_builds(module: str, node: Any) -> bool:
    """Build the node's schema once here: ComfyUI builds it right after, and an exception there (e.g. a
    dropdown listing that hit something unexpected) would make the whole pack fail to load."""
    try:
        node.GET_SCHEMA()
    except Exception as e:  # one node's problem must not hide the others
        key = f"{module}.{getattr(node, '__name__', node)}"
        IMPORT_ERRORS[key] = f"{type(e).__name__}: {e}"
        log.error("Bonsai Image: node %s is unavailable, its schema could not be built: %s: %s", key, type(e).__name__, e)
        log.debug("schema failure of %s", key, exc_info=True)
        return False
    return True


def _register_routes() -> None:
    """``GET /bonsai_image/installed`` for the on-open notice (nodes/installed.py); the nodes work without it."""
    try:
        from .nodes import installed

        installed.register_route()
    except Exception as e:  # noqa: BLE001 -- the notice is a convenience: never what costs the pack its nodes
        log.warning("Bonsai Image: the on-open notice's route is unavailable: %s: %s", type(e).__name__, e)


if ComfyExtension is not None:

    class BonsaiImageExtension(ComfyExtension):
        async def get_node_list(self) -> list[Any]:
            nodes = gather_nodes()
            _register_routes()
            failed = f" ({len(IMPORT_ERRORS)} node modules failed)" if IMPORT_ERRORS else ""
            log.info("Bonsai Image: %d nodes registered%s", len(nodes), failed)
            return nodes

    async def comfy_entrypoint() -> BonsaiImageExtension:
        return BonsaiImageExtension()
