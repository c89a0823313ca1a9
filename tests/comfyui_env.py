"""A real ComfyUI, started in this process, for the integration tests (tests/comfy, tests/lora, tests/te, ...).

ComfyUI is found through ``$COMFYUI_PATH``, a parent ``custom_nodes/`` of this repository, or
``~/comfy/ComfyUI``. It starts with ``--cpu`` the way ``main.py`` would (args parsed, built-in extra
nodes loaded), then this repository is linked into ``<ComfyUI>/custom_nodes/bonsai_image`` and
loaded by ComfyUI's own custom-node loader (``nodes.load_custom_node``). Prompts (API format) go
through ``execution.validate_prompt`` and ``execution.PromptExecutor`` exactly as the server runs
them. Nothing of ComfyUI is replaced; the only addition is a test output node,
``BonsaiTestCapture``, that keeps whatever reaches it so tests can compare tensors.

Use from a conftest::

    from comfyui_env import comfyui, comfy_models  # noqa: F401  (pytest fixtures)

``comfyui`` is session scoped and skips (with the reason and how to enable) when no ComfyUI exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "bonsai_image"
ENV_VAR = "COMFYUI_PATH"
ENABLE_HINT = f"set {ENV_VAR}=/path/to/ComfyUI (a checkout with main.py and comfy/sd.py), or clone ComfyUI to ~/comfy/ComfyUI"

log = logging.getLogger("bonsai_image.tests")


# ---------------------------------------------------------------------------
# finding ComfyUI
# ---------------------------------------------------------------------------


def _is_comfyui(p: Path) -> bool:
    return (p / "main.py").is_file() and (p / "comfy" / "sd.py").is_file() and (p / "nodes.py").is_file()


def find_comfyui() -> tuple[Path | None, str]:
    """(ComfyUI root, how it was found) or (None, why none was found)."""
    tried = []
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser().resolve()
        if _is_comfyui(p):
            return p, f"${ENV_VAR}"
        tried.append(f"${ENV_VAR}={env} (not a ComfyUI checkout)")
    if REPO.parent.name == "custom_nodes" and _is_comfyui(REPO.parent.parent):
        return REPO.parent.parent, "parent custom_nodes/"
    home = Path.home() / "comfy" / "ComfyUI"
    if _is_comfyui(home):
        return home, "~/comfy/ComfyUI"
    tried.append(f"{home} (absent)")
    return None, "no ComfyUI checkout found: tried " + "; ".join(tried)


def comfyui_version(root: Path) -> str:
    """``comfyui_version.__version__`` read from the file (no import needed)."""
    f = root / "comfyui_version.py"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read_text()) if f.is_file() else None
    return m.group(1) if m else "unknown"


# ---------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------


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
    sys.argv = ["main.py", "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses the args once, picks the CPU)
    finally:
        sys.argv = argv


def link_pack(custom_nodes: Path) -> Path:
    """Link this checkout into ``custom_nodes/<PACK_DIR_NAME>``.

    A link left by another checkout (an earlier clone, a CI workspace) is re-pointed atomically; a real
    folder of that name is a user's installed copy and is never touched.
    """
    link = custom_nodes / PACK_DIR_NAME
    if link.is_symlink():
        if link.resolve() != REPO:
            tmp = custom_nodes / f".{PACK_DIR_NAME}.{os.getpid()}.link"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(REPO, target_is_directory=True)
            os.replace(tmp, link)
    elif link.exists():
        raise RuntimeError(f"{link} is an installed copy of the pack, not a link to {REPO}; move it away to run the ComfyUI tests")
    else:
        link.symlink_to(REPO, target_is_directory=True)
    return link


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


class _Server:
    """The part of ``server.PromptServer`` the executor talks to; records every event."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.node_replace_manager: Any = None  # ComfyUI's own NodeReplaceManager, set at boot
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, text: bytes | str, node_id: str, sid: str | None = None) -> None:
        # The real server packs this into a binary websocket frame; recorded here as text.
        self.send_sync("progress_text", (node_id, text.decode() if isinstance(text, bytes) else text), sid)


class ComfyUISession:
    """ComfyUI running in this process with the Bonsai pack loaded through the custom-node loader."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.version = comfyui_version(root)
        self.models_dir = models_dir
        self.server = _Server()
        self.captured: dict[str, Any] = {}
        self.progress: list[tuple[int, int, str | None]] = []
        self._tiny: dict[tuple[str, int], tuple[str, str]] = {}
        self._boot()

    # -- startup ---------------------------------------------------------------------------

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
        sys.argv = ["main.py", "--cpu"]
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses args, picks the CPU)
        import comfy.utils
        import execution
        import folder_paths

        import nodes

        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self._install_prompt_server()  # before the built-in extra nodes: nodes_replacements registers through it
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        # Test models live in a temporary folder, first in the search list.
        for kind in ("diffusion_models", "text_encoders", "vae", "loras", "bonsai"):
            d = self.models_dir / kind
            d.mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(kind, str(d), is_default=True)
        folder_paths.set_output_directory(str(self.models_dir / "output"))
        folder_paths.set_temp_directory(str(self.models_dir / "temp"))
        nodes.NODE_CLASS_MAPPINGS["BonsaiTestCapture"] = _make_capture_node(self.captured)
        nodes.NODE_CLASS_MAPPINGS["BonsaiTestConditioning"] = _TestConditioning
        nodes.NODE_CLASS_MAPPINGS["BonsaiTestLatent"] = _TestLatent
        self.pack_path = self._link_pack()
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok = asyncio.run(nodes.load_custom_node(str(self.pack_path)))
        if not ok:
            raise RuntimeError(f"ComfyUI's custom-node loader could not load {self.pack_path} (see the log above)")
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        self.pack_module = sys.modules[str(self.pack_path).replace(".", "_x_")]
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
        )

    def _install_prompt_server(self) -> None:
        # Stock nodes use ``server.PromptServer.instance`` (GetImageSize calls send_progress_text, the built-in
        # node replacements register with its node_replace_manager), which main.py sets when it starts the web
        # server. The recording server stands in for it for the whole session; an instance that already exists
        # (a real server in this process) is left alone.
        import server
        from app.node_replace_manager import NodeReplaceManager

        self.server.node_replace_manager = NodeReplaceManager()
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = self.server

    def _link_pack(self) -> Path:
        custom_nodes = self.root / "custom_nodes"
        if REPO.parent.resolve() == custom_nodes.resolve():
            return REPO  # already installed as a custom node (under any folder name)
        return link_pack(custom_nodes)

    def _progress_hook(self, value: int, total: int, preview: Any, prompt_id: str | None = None, node_id: str | None = None) -> None:
        # What main.py's hijack_progress does, minus the websocket: record, then honour interrupts.
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        self.progress.append((value, total, node_id))
        comfy.model_management.throw_exception_if_processing_interrupted()

    # -- access to the loaded pack ---------------------------------------------------------

    def pack(self, submodule: str) -> ModuleType:
        """A module of the pack as ComfyUI imported it, e.g. ``pack("nodes.ops")``."""
        import importlib

        return importlib.import_module(f"{self.pack_module.__name__}.{submodule}")

    def node_class(self, node_id: str) -> Any:
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    # -- tiny models ------------------------------------------------------------------------

    def tiny_model(self, variant: str = "binary", seed: int = 0) -> tuple[str, str]:
        """(canonical file, its dequantized dense bf16 copy) in ``diffusion_models``, written once.

        Made by the pack's own ``bonsai_core.fixtures`` / ``bonsai_core.convert`` (deterministic per seed)."""
        key = (variant, seed)
        if key not in self._tiny:
            fixtures = self.pack("bonsai_core.fixtures")
            convert = self.pack("bonsai_core.convert")
            d = self.models_dir / "diffusion_models"
            canonical = f"tiny-{variant}-s{seed}.safetensors"
            dense = f"tiny-{variant}-s{seed}-dense.safetensors"
            fixtures.make_fixture(variant, "tiny", "canonical", seed, d / canonical)
            convert.dequantize_checkpoint(d / canonical, d / dense)
            self._tiny[key] = (canonical, dense)
        return self._tiny[key]

    # -- running prompts -------------------------------------------------------------------

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


def _make_capture_node(store: dict[str, Any]) -> type:
    class BonsaiTestCapture:
        """Test-only output node: keeps its input under ``label`` in the session's ``captured``."""

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"value": ("*", {}), "label": ("STRING", {"default": "out"})}}

        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        def capture(self, value: Any, label: str) -> dict[str, Any]:
            store[label] = value
            return {}

    return BonsaiTestCapture


class _TestConditioning:
    """Test-only source of FLUX.2 conditioning for tiny models (no text encoder needed):
    ``[[randn(batch, tokens, width), {"pooled_output": None}]]`` from a seed."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                "width": ("INT", {"default": 384, "min": 1, "max": 16384}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed: int, tokens: int, width: int, batch: int) -> tuple[list[Any]]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(batch, tokens, width, generator=g), {"pooled_output": None}]],)


class _TestLatent:
    """Test-only random FLUX.2 latent ``{"samples": randn(batch, 128, height/16, width/16)}`` (e.g. a reference image)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "width": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 16}),
                "height": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 16}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed: int, width: int, height: int, batch: int) -> tuple[dict[str, Any]]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return ({"samples": torch.randn(batch, 128, height // 16, width // 16, generator=g)},)


# ---------------------------------------------------------------------------
# per-module model folders
# ---------------------------------------------------------------------------

MODEL_KINDS = ("bonsai", "diffusion_models", "text_encoders", "vae", "loras")
# Names the downloader gives releases (snapshot folders, canonical files). Fixtures under these names
# must live in a module's own root (:func:`models_root`): in the shared root they would be found by
# every later test module, which then skips writing its own (complete) fixture of that name.
RELEASE_PREFIX = "bonsai-image-"


@contextlib.contextmanager
def models_root(folder_paths: Any, root: Path, kinds: tuple[str, ...] = MODEL_KINDS) -> Iterator[Path]:
    """Make ``root/<kind>`` the first folder ComfyUI searches for each kind, for the duration of the block.

    Fixtures installed here use the release names other test modules also use for their own fixtures;
    searched first they win while this module runs, and afterwards ComfyUI no longer sees them.
    """
    added: list[tuple[str, str]] = []
    for kind in kinds:
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)
        added.append((kind, str(d)))
    _forget_listings(folder_paths, kinds)
    try:
        yield root
    finally:
        for kind, d in added:
            paths = folder_paths.folder_names_and_paths[kind][0]
            if d in paths:
                paths.remove(d)
        _forget_listings(folder_paths, kinds)


def _forget_listings(folder_paths: Any, kinds: tuple[str, ...]) -> None:
    # ComfyUI caches file listings per kind (checked by folder mtimes): drop them when the folder list changes.
    for kind in kinds:
        folder_paths.filename_list_cache.pop(kind, None)


def release_named_entries(models_dir: Path) -> list[str]:
    """Entries of a models root (``<kind>/<name>``) carrying a release name."""
    return sorted(
        f"{kind}/{p.name}" for kind in MODEL_KINDS if (models_dir / kind).is_dir() for p in (models_dir / kind).iterdir() if p.name.startswith(RELEASE_PREFIX)
    )


_SESSION: ComfyUISession | None = None
_STATUS: dict[str, Any] = {}


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
    _SESSION = ComfyUISession(root, models_dir)
    _STATUS.update(ran=True)
    return _SESSION


_MODELS_DIR: Path | None = None


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary models root the ComfyUI session searches first (``diffusion_models/``, ``bonsai/``, ...).

    One folder per process: each conftest that re-exports this fixture gets its own fixture
    definition, but there is only one ComfyUI (and one set of model folders) per process."""
    global _MODELS_DIR
    if _SESSION is not None:
        return _SESSION.models_dir
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
    of other modules otherwise). Re-exported by each conftest so it applies to its folder."""
    before = set(release_named_entries(_SESSION.models_dir)) if _SESSION is not None else set()
    yield
    if _SESSION is not None:
        leaked = sorted(set(release_named_entries(_SESSION.models_dir)) - before)
        assert not leaked, (
            f"this module left release-named entries in the shared models root {_SESSION.models_dir}: {leaked}; "
            "write them under the module_models fixture instead"
        )
