"""Low-bit matmul backends, one per file, behind :class:`kernels.base.LowBitBackend`.

This package is loaded by :mod:`bonsai_core.dispatch` as ``bonsai_core.kernels`` (see
``bonsai_core/_kernels_loader.py``), so modules here import the core with ``from .. import``.
Nothing here may fail at import because an optional package (gemlite, mlx, triton) is missing.
"""
