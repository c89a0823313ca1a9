"""The pack's ``kernels/`` imported as ``bonsai_image.kernels``, never as the top-level ``kernels``.

Inside ComfyUI the pack is a package (``custom_nodes/<pack>``) and its backends are ``<pack>.kernels``.
Tooling and tests run with the repository itself on ``sys.path`` (``python -m bonsai_tools`` from the
pack folder, pytest's ``pythonpath = ["."]``), where a plain ``import kernels`` would find the pack's
folder. That name belongs to Hugging Face's ``kernels`` package, which transformers (5.25 and later)
depends on and imports (``transformers.modeling_utils`` -> ``integrations.hub_kernels``:
``from kernels import CUDAProperties, ...``): shadowing it breaks transformers in the same process.

:func:`isolate_pack` therefore (1) registers the repository as the package :data:`PACK_PACKAGE`
without running its ``__init__.py`` (the ComfyUI entry point), so ``bonsai_image.kernels`` is the
pack's backends with their relative imports intact, and (2) puts a finder first on ``sys.meta_path``
that resolves the top-level ``kernels`` from ``sys.path`` minus the repository and its folders: Hugging Face's
package when it is installed, else a plain ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
PACK_PACKAGE = "bonsai_image"
# Top-level names of the repository's folders that a package of the same name owns elsewhere.
SHADOWED_NAMES = ("kernels",)


def _inside_repo(entry: str) -> bool:
    # The root itself and folders in it (pytest also puts tests/ on sys.path, which holds a tests/kernels/).
    try:
        return Path(entry or ".").resolve().is_relative_to(REPO)
    except OSError:
        return False


class _SkipRepoFinder:
    """Finds :data:`SHADOWED_NAMES` on ``sys.path`` without the repository root."""

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in SHADOWED_NAMES:
            return None
        outside = [p for p in sys.path if not _inside_repo(p)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, outside)
        if spec is None:
            # Not installed: fail here rather than let the next finder pick the repository's folder.
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (the repository's {fullname}/ is the pack's own, imported as {PACK_PACKAGE}.{fullname})",
                name=fullname,
            )
        return spec


def isolate_pack() -> ModuleType:
    """Register :data:`PACK_PACKAGE` for this repository and keep its folders off the top-level names. Idempotent."""
    if not any(f is _SkipRepoFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipRepoFinder)
    shadow = sys.modules.get("kernels")
    if shadow is not None and getattr(shadow, "__file__", None) and Path(shadow.__file__).resolve().is_relative_to(REPO):
        # Imported under the wrong name before isolation (an old entry point): forget it.
        for name in [n for n in sys.modules if n == "kernels" or n.startswith("kernels.")]:
            del sys.modules[name]
    pack = sys.modules.get(PACK_PACKAGE)
    if pack is None:
        spec = importlib.machinery.ModuleSpec(PACK_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(REPO)]
        pack = importlib.util.module_from_spec(spec)
        pack.__path__ = [str(REPO)]
        sys.modules[PACK_PACKAGE] = pack
    elif [str(Path(p).resolve()) for p in getattr(pack, "__path__", [])] != [str(REPO)]:
        raise ImportError(f"{PACK_PACKAGE} is already imported from {list(getattr(pack, '__path__', []))}, not from {REPO}")
    return pack


def pack_kernels() -> ModuleType:
    """The pack's ``kernels`` package (``bonsai_image.kernels``)."""
    isolate_pack()
    return importlib.import_module(f"{PACK_PACKAGE}.kernels")
