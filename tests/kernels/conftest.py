"""The kernels tests use the repository's ``kernels`` package through the runtime's dispatch, the
way the ComfyUI nodes do: the consumer registers the backends (bonsai_core never imports kernels)."""

from __future__ import annotations

from bonsai_core import dispatch
from bonsai_image import kernels

dispatch.register_backends(kernels.BACKENDS)
