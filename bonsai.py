#!/usr/bin/env python3
"""The pack's command line from a git install, without ``pip install``::

    python ComfyUI/custom_nodes/<pack>/bonsai.py download ternary
    python ComfyUI/custom_nodes/<pack>/bonsai.py inspect  ComfyUI/models/bonsai/<repo>
    python ComfyUI/custom_nodes/<pack>/bonsai.py --help

Run it with ComfyUI's own Python (the one that has torch and huggingface_hub), from any folder.
Downloads go to the ComfyUI this file sits in (``custom_nodes/<pack>/..``). It runs the same
commands as ``python -m bonsai_core``, always with the ``bonsai_core`` beside this file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType


def _load_bonsai_core() -> ModuleType:
    here = os.path.dirname(os.path.abspath(__file__))
    # Python put this folder first on sys.path. It also holds ``kernels/`` and ``nodes/``, which must
    # not become top-level modules (``kernels`` would shadow Hugging Face's package of that name), so
    # only ``bonsai_core`` is imported from it, by file location.
    mine = {here, os.path.realpath(here)}
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in mine and os.path.realpath(p or os.curdir) not in mine]
    init = os.path.join(here, "bonsai_core", "__init__.py")
    spec = importlib.util.spec_from_file_location("bonsai_core", init, submodule_search_locations=[os.path.dirname(init)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load bonsai_core from {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bonsai_core"] = module  # before executing it: its submodules import the package by name
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    _load_bonsai_core()
    from bonsai_core.cli import main

    sys.exit(main())
