#!/usr/bin/env python3
"""The pack's command line from a git install, without ``pip install``::

    python ComfyUI/custom_nodes/<pack>/bonsai.py download ternary
    python ComfyUI/custom_nodes/<pack>/bonsai.py inspect  ComfyUI/models/bonsai/<repo>
    python ComfyUI/custom_nodes/<pack>/bonsai.py tune
    python ComfyUI/custom_nodes/<pack>/bonsai.py --help

Run it with ComfyUI's own Python (the one that has torch and huggingface_hub), from any folder.
Downloads go to the ComfyUI this file sits in (``custom_nodes/<pack>/..``). It runs the same
commands as ``python -m bonsai_core``, always with the ``bonsai_core`` beside this file, plus
``tune``, which needs the pack's ``kernels/`` (loaded here under a private name).

The interpreter is checked first, with the standard library only: run with a Python that lacks
torch or huggingface_hub (the system ``python3`` instead of ComfyUI's venv is the usual slip), the
script prints one line naming ComfyUI's interpreter when it can find it, instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_PYTHON = (3, 10)
EXIT_WRONG_PYTHON = 2
TENSOR_MODULES = ("torch", "numpy", "safetensors")  # what every command but a plain download imports
HUB_MODULE = "huggingface_hub"
# Where ComfyUI's interpreter lives, relative to the ComfyUI folder: its own venv (git install,
# comfy-cli, the desktop app's .venv) or the Windows portable build's python_embeded beside it.
INTERPRETER_CANDIDATES = (
    ("venv", "bin", "python"),
    (".venv", "bin", "python"),
    ("venv", "Scripts", "python.exe"),
    (".venv", "Scripts", "python.exe"),
    ("..", "python_embeded", "python.exe"),
)


def containing_comfyui(pack_dir: str = HERE) -> str | None:
    """``<ComfyUI>`` when this file sits in ``<ComfyUI>/custom_nodes/<pack>/`` (also through a link)."""
    for folder in dict.fromkeys((pack_dir, os.path.realpath(pack_dir))):
        parent = os.path.dirname(folder)
        root = os.path.dirname(parent)
        if os.path.basename(parent) == "custom_nodes" and (
            os.path.isfile(os.path.join(root, "main.py")) or os.path.isdir(os.path.join(root, "models"))
        ):
            return root
    return None


def comfyui_python(comfyui: str | None) -> str | None:
    """The interpreter of that ComfyUI (its venv, or ``python_embeded``), if one is there."""
    if comfyui is None:
        return None
    for parts in INTERPRETER_CANDIDATES:
        cand = os.path.normpath(os.path.join(comfyui, *parts))
        if os.path.isfile(cand):
            return cand
    return None


def needed_modules(argv: list[str]) -> tuple[str, ...]:
    """What the command in ``argv`` imports: a plain download only huggingface_hub, the rest torch too."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "download":
        return (HUB_MODULE, *(TENSOR_MODULES if "--to-canonical" in argv else ()))
    return (*TENSOR_MODULES, HUB_MODULE) if command is None else TENSOR_MODULES


def _command_line(python: str | None, argv: list[str]) -> str:
    parts = [*([python] if python else []), os.path.abspath(__file__), *argv]
    return subprocess.list2cmdline(parts) if os.name == "nt" else shlex.join(parts)


def wrong_python(argv: list[str]) -> str | None:
    """One line saying what this interpreter lacks and which Python to use, or None when it will do."""
    lacks = [] if sys.version_info >= MIN_PYTHON else [f"Python >= {'.'.join(map(str, MIN_PYTHON))}"]
    lacks += [m for m in needed_modules(argv) if importlib.util.find_spec(m) is None]
    if not lacks:
        return None
    version = ".".join(map(str, sys.version_info[:3]))
    head = f"bonsai.py: this Python ({sys.executable}, {version}) has no {', '.join(lacks)}"
    comfyui = containing_comfyui()
    python = comfyui_python(comfyui)
    # Not realpath: a venv's python is a link to the base interpreter, which every other venv shares too.
    is_this = python is not None and os.path.normcase(os.path.abspath(python)) == os.path.normcase(os.path.abspath(sys.executable))
    if python is not None and not is_this:
        return f"{head}; run it with ComfyUI's Python: {_command_line(python, argv)}"
    if python is not None:
        return f"{head}; this is ComfyUI's own Python ({python}): install ComfyUI's requirements into it (pip install -r requirements.txt)"
    where = f"the ComfyUI at {comfyui}" if comfyui else "your ComfyUI"
    return (
        f"{head}; run it with the Python that runs {where} (its venv's bin/python, or python_embeded\\python.exe "
        f"in the Windows portable build): <that python> {_command_line(None, argv)}"
    )


def _load_package(name: str, folder: str) -> ModuleType:
    init = os.path.join(HERE, folder, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {folder} from {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it: its submodules import the package by name
    spec.loader.exec_module(module)
    return module


def _load_bonsai_core() -> ModuleType:
    # Python put this folder first on sys.path. It also holds ``kernels/`` and ``nodes/``, which must
    # not become top-level modules (``kernels`` would shadow Hugging Face's package of that name), so
    # only ``bonsai_core`` is imported from it, by file location.
    mine = {HERE, os.path.realpath(HERE)}
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in mine and os.path.realpath(p or os.curdir) not in mine]
    return _load_package("bonsai_core", "bonsai_core")


def _register_kernels() -> None:
    """The pack's matmul backends, for ``tune`` (under a private name: never the top-level ``kernels``)."""
    kernels = _load_package("bonsai_image_kernels", "kernels")
    from bonsai_core import dispatch

    dispatch.register_backends(kernels.BACKENDS)


def _prog() -> str:
    comfyui = containing_comfyui()
    if comfyui is None:
        return "python bonsai.py"
    rel = os.path.relpath(os.path.abspath(__file__), comfyui)
    return f"python {rel if not rel.startswith('..') else os.path.abspath(__file__)}"


if __name__ == "__main__":
    args = sys.argv[1:]
    problem = wrong_python(args)
    if problem is not None:
        sys.stderr.write(problem + "\n")
        sys.exit(EXIT_WRONG_PYTHON)
    _load_bonsai_core()
    if next((a for a in args if not a.startswith("-")), None) == "tune":
        _register_kernels()
    from bonsai_core.cli import main

    sys.exit(main(args, prog=_prog()))
