"""The pytest fixtures of the ComfyUI harness (registered for every test folder by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .comfyui import ComfyUISession, current_session, start_comfyui
from .model_folders import models_root, release_named_entries

_MODELS_DIR: Path | None = None


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary models root the ComfyUI session searches first (``diffusion_models/``, ``bonsai/``, ...).

    One folder per process, like the one ComfyUI session it belongs to."""
    global _MODELS_DIR
    session = current_session()
    if session is not None:
        return session.models_dir
    if _MODELS_DIR is None:
        _MODELS_DIR = tmp_path_factory.mktemp("comfy_models")
    return _MODELS_DIR


@pytest.fixture(scope="session")
def comfyui(comfy_models: Path) -> ComfyUISession:
    """ComfyUI started in-process with the pack loaded; skips loudly when ComfyUI is absent."""
    return start_comfyui(comfy_models)


@pytest.fixture(scope="module")
def module_models(comfyui: ComfyUISession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A models root of this test module's own, searched first while the module runs (see :func:`models_root`).

    Anything written under a release name (a snapshot, a downloaded repository) goes here, never into
    the shared :func:`comfy_models`."""
    with models_root(comfyui.folder_paths, tmp_path_factory.mktemp("module_models")) as root:
        yield root


@pytest.fixture(scope="module", autouse=True)
def shared_models_stay_clean() -> Iterator[None]:
    """Fails the module that leaves a release-named entry in the shared models root (order-dependent failures
    of other modules otherwise)."""
    session = current_session()
    before = set(release_named_entries(session.models_dir)) if session is not None else set()
    yield
    session = current_session()  # a module may be the one that started ComfyUI
    if session is not None:
        leaked = sorted(set(release_named_entries(session.models_dir)) - before)
        assert not leaked, (
            f"this module left release-named entries in the shared models root {session.models_dir}: {leaked}; "
            "write them under the module_models fixture instead"
        )
