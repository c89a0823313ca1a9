"""Load the top-level ``kernels/`` folder as the subpackage ``<bonsai_core>.kernels``.

The repo keeps backends in a top-level ``kernels/`` (design card), but a top-level import
name ``kernels`` would shadow Hugging Face's ``kernels`` package inside a user's ComfyUI
environment. So it is only ever imported under this package: from the sibling folder in a
git checkout / ComfyUI custom_nodes install, or as the ``bonsai_core.kernels`` subpackage
that ``pip install`` maps it to (pyproject ``package-dir``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PARENT = __name__.rpartition(".")[0]
_NAME = f"{_PARENT}.kernels"


def load_kernels() -> ModuleType:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    folder = Path(__file__).resolve().parent.parent / "kernels"
    if (folder / "__init__.py").is_file():
        spec = importlib.util.spec_from_file_location(_NAME, folder / "__init__.py", submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_NAME]
            raise
        return module
    return importlib.import_module(_NAME)
