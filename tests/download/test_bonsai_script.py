"""``bonsai.py``: the command line of a git install, runnable from any folder without ``pip install``.
It loads the ``bonsai_core`` beside it and leaves the pack folder off ``sys.path``, so the pack's
``kernels/`` never shadows Hugging Face's ``kernels`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from release_trees import REPO_ROOT

PROBE = """
import importlib.util, runpy, sys
sys.path.insert(0, {pack!r})  # what `python bonsai.py` does before the script runs
ns = runpy.run_path({script!r}, run_name="probe")
core = ns["_load_bonsai_core"]()
spec = importlib.util.find_spec("kernels")
print("CORE", core.__file__)
print("KERNELS", None if spec is None else spec.origin)
print("ONPATH", {pack!r} in sys.path)
"""


def test_bonsai_py_lists_every_command_from_another_folder(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bonsai.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stderr
    for command in ("inspect", "convert", "dequantize", "download"):
        assert command in out.stdout


def test_bonsai_py_loads_its_own_bonsai_core_and_hides_the_pack_folder(tmp_path: Path) -> None:
    code = PROBE.format(pack=str(REPO_ROOT), script=str(REPO_ROOT / "bonsai.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("CORE", "KERNELS", "ONPATH")))
    assert lines["CORE"] == str(REPO_ROOT / "bonsai_core" / "__init__.py")
    assert lines["ONPATH"] == "False"
    # "kernels" may well be importable (transformers depends on Hugging Face's package of that name, and a
    # virtualenv can sit anywhere, inside a clone too); it must never be the pack's own kernels/ folder.
    pack_kernels = (REPO_ROOT / "kernels" / "__init__.py").resolve()
    assert lines["KERNELS"] == "None" or Path(lines["KERNELS"]).resolve() != pack_kernels, lines["KERNELS"]
