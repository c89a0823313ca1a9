"""ComfyUI started in this process (``--cpu``, the way ``main.py`` would) with the pack loaded by ComfyUI's
own custom-node loader (``nodes.load_custom_node``); API prompts go through ``execution.validate_prompt``
and ``execution.PromptExecutor`` exactly as the server runs them. One session per process."""

from __future__ import annotations

import asyncio
import copy
import importlib
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from . import model_folders, probe_nodes
from .locate import ENABLE_HINT, comfyui_version, find_comfyui, pack_link
from .prompt_server import RecordingServer

# BONSAI_TEST_COMFY_DEVICE=gpu starts the session on the GPU (ComfyUI's defaults, as main.py without
# --cpu): the GPU-marked executor tests run through the device tool that way; every other run is --cpu.
DEVICE_ENV = "BONSAI_TEST_COMFY_DEVICE"


def comfy_device_args() -> list[str]:
    """ComfyUI's device arguments for the test session (``--cpu`` unless the GPU was asked for)."""
    return [] if os.environ.get(DEVICE_ENV, "").strip().lower() == "gpu" else ["--cpu"]


def session_on_gpu() -> bool:
    return not comfy_device_args()


def import_comfy_early() -> None:
    """Put ComfyUI (``--cpu``) in place before pytest imports the repository root's ``__init__.py``.

    pytest imports that file (the pack's entry point, which imports ``comfy_api``) while setting up
    the package around the tests, before any fixture runs.
    """
    root, _ = find_comfyui()
    if root is None or "comfy.model_management" in sys.modules:
        return
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    argv = sys.argv
    sys.argv = ["main.py", *comfy_device_args()]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses the args once, picks the CPU)
    finally:
        sys.argv = argv


@dataclass
class PromptResult:
    """What one prompt produced: validation errors, execution messages, captured values."""

    prompt_id: str
    valid: bool
    validation_error: dict[str, Any] | None
    node_errors: dict[str, Any]
    success: bool
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    captured: dict[str, Any] = field(default_factory=dict)

    def message(self, event: str) -> dict[str, Any] | None:
        for ev, data in self.messages:
            if ev == event:
                return data
        return None

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``execution_error`` message, if the prompt failed while running."""
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    def latent(self, label: str = "out") -> Any:
        return self.captured[label]["samples"]


class ComfyUISession:
    """ComfyUI running in this process with the Bonsai pack loaded through the custom-node loader."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.version = comfyui_version(root)
        self.models_dir = models_dir
        self.server = RecordingServer()
        self.captured: dict[str, Any] = {}
        self.progress: list[tuple[int, int, str | None]] = []
        self._tiny: dict[tuple[str, int], tuple[str, str]] = {}
        self._boot()

    def _boot(self) -> None:
        root = str(self.root)
        # ComfyUI's top-level modules (nodes, execution, folder_paths, ...) must win over this
        # repository's own nodes/ package, which is on sys.path when pytest runs from the repo.
        if sys.path[0] != root:
            sys.path.insert(0, root)
        stale = sys.modules.get("nodes")
        if stale is not None and not str(getattr(stale, "__file__", "")).startswith(root):
            for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
                del sys.modules[name]
        sys.argv = ["main.py", *comfy_device_args()]
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses args, picks the CPU)
        import comfy.utils
        import execution
        import folder_paths

        import nodes

        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self.server.install()  # before the built-in extra nodes: nodes_replacements registers through it
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        model_folders.add_session_folders(folder_paths, self.models_dir)  # test models first in the search list
        probe_nodes.register(nodes.NODE_CLASS_MAPPINGS, self.captured)
        self.pack_path = pack_link(self.root)
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok = asyncio.run(nodes.load_custom_node(str(self.pack_path)))
        if not ok:
            raise RuntimeError(f"ComfyUI's custom-node loader could not load {self.pack_path} (see the log above)")
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        self.pack_module = sys.modules[str(self.pack_path).replace(".", "_x_")]
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
        )

    def _progress_hook(self, value: int, total: int, preview: Any, prompt_id: str | None = None, node_id: str | None = None) -> None:
        # What main.py's hijack_progress does, minus the websocket: record, then honour interrupts.
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        self.progress.append((value, total, node_id))
        comfy.model_management.throw_exception_if_processing_interrupted()

    def pack(self, submodule: str) -> ModuleType:
        """A module of the pack as ComfyUI imported it, e.g. ``pack("nodes.ops")`` (one copy of its classes and registries)."""
        return importlib.import_module(f"{self.pack_module.__name__}.{submodule}")

    def node_class(self, node_id: str) -> Any:
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def tiny_model(self, variant: str = "binary", seed: int = 0) -> tuple[str, str]:
        """(canonical file, its dequantized dense bf16 copy) in ``diffusion_models``, written once.

        Made by the pack's own fixture generator and ``bonsai_core.convert`` (deterministic per seed)."""
        key = (variant, seed)
        if key not in self._tiny:
            fixtures = self.pack("bonsai_tools.synth")
            convert = self.pack("bonsai_core.convert")
            d = self.models_dir / "diffusion_models"
            canonical = f"tiny-{variant}-s{seed}.safetensors"
            dense = f"tiny-{variant}-s{seed}-dense.safetensors"
            fixtures.make_fixture(variant, "tiny", "canonical", seed, d / canonical)
            convert.dequantize_checkpoint(d / canonical, d / dense)
            self._tiny[key] = (canonical, dense)
        return self._tiny[key]

    def run(self, prompt: dict[str, Any], *, fresh_cache: bool = True) -> PromptResult:
        """Validate and execute an API-format prompt; ``fresh_cache`` drops cached node outputs first."""
        # The executor writes bookkeeping (e.g. "is_changed") into the prompt; a server gets fresh JSON per request.
        prompt = copy.deepcopy(prompt)
        if fresh_cache:
            self.executor.reset()
        self.captured.clear()
        self.progress.clear()
        prompt_id = str(uuid.uuid4())
        self.server.last_prompt_id = prompt_id
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return PromptResult(prompt_id, False, error, node_errors, False)
        asyncio.run(self.executor.execute_async(prompt, prompt_id, {}, outputs))
        return PromptResult(
            prompt_id, True, None, node_errors, self.executor.success, list(self.executor.status_messages), dict(self.captured)
        )


_SESSION: ComfyUISession | None = None
_STATUS: dict[str, Any] = {}


def current_session() -> ComfyUISession | None:
    """The process-wide session, or None when no test has started ComfyUI yet."""
    return _SESSION


def session_status() -> dict[str, Any]:
    """Whether ComfyUI started in this test session, its version and path (for the status file)."""
    return dict(_STATUS)


def start_comfyui(models_dir: Path) -> ComfyUISession:
    """The process-wide ComfyUI session (started on first use). Raises ``pytest.skip`` when absent."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    root, how = find_comfyui()
    if root is None:
        _STATUS.update(ran=False, reason=f"{how}; {ENABLE_HINT}")
        pytest.skip(f"ComfyUI integration tests SKIPPED: {how}. To run them: {ENABLE_HINT}")
    _STATUS.update(path=str(root), version=comfyui_version(root), found_by=how)
    try:
        _SESSION = ComfyUISession(root, models_dir)
    except Exception as e:
        # The status file must say ComfyUI was found but the pack did not load, not "no test selected".
        _STATUS.update(ran=False, reason=f"ComfyUI {comfyui_version(root)} at {root} failed to start with the pack: {e}")
        raise
    _STATUS.update(ran=True)
    return _SESSION
