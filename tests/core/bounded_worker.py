"""Run one function of a tests/core module in a fresh interpreter whose heap is capped.

``python tests/core/bounded_worker.py MEM_MB module:function [args...]``: imports torch and
bonsai_core (their baseline is not counted), then limits the data segment (heap and anonymous
maps, RLIMIT_DATA) to the baseline plus ``MEM_MB``, then calls ``function(*args)``. An allocation
past the cap raises MemoryError instead of growing the machine into swap, so a reader that
allocates what a crafted file declares fails here (exit 3) within seconds.

Exit codes: 0 the function returned, 1 it raised, 3 MemoryError. Use :func:`run_bounded`.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_bounded(target: str, *args: str, mem_mb: int = 512, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``module:function`` (a module in tests/core) in a capped interpreter; returns the process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(HERE / "bounded_worker.py"), str(mem_mb), target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _cap_heap(extra_mb: int) -> None:
    import resource

    status = Path("/proc/self/status").read_text()
    m = re.search(r"VmData:\s+(\d+) kB", status)
    if m is None:  # not Linux: no cap, the time limit still applies
        return
    limit = int(m.group(1)) * 1024 + extra_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def main() -> int:
    mem_mb, target, *args = sys.argv[1:]
    import torch  # noqa: F401  (baseline: imported before the cap)

    import bonsai_core.formats  # noqa: F401
    import bonsai_core.te_formats  # noqa: F401

    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    _cap_heap(int(mem_mb))
    try:
        fn(*args)
    except MemoryError:
        traceback.print_exc()
        return 3
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
