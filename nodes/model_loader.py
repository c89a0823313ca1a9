"""``BonsaiModelLoader``: a Bonsai transformer as a stock ComfyUI ``MODEL``.

The model is ComfyUI's own FLUX.2 (``comfy.sd.load_diffusion_model_state_dict``) built with
:func:`nodes.ops.make_bonsai_ops`, so samplers, schedulers, ReferenceLatent, LoRA key maps and
model management (lowvram, offload, dynamic VRAM) see a stock model whose quantized linears stay
packed.

Sources listed in the combo:

* canonical files (``python -m bonsai_core convert``) in ``models/diffusion_models`` (or
  ``models/unet``), recognised by their safetensors metadata (header read only, cached by mtime);
* released snapshot folders (gemlite, MLX, unpacked, GGUF layouts) under ``models/bonsai``,
  packed to canonical codes on the fly by ``bonsai_core.formats`` (listed once that reader exists).

Every bad input ends as one ``BonsaiFormatError`` naming the file and the tensor; prompt
validation already refuses files whose header is wrong, so the UI shows a node error, not a
traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..bonsai_core import dispatch
from ..bonsai_core.canonical import is_canonical, load_canonical, scale_key
from ..bonsai_core.checkpoint import BonsaiCheckpoint
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.packing import PackedWeight
from ._paths import escapes_models_folder, name_problem
from .lora import install_lora_support
from .ops import BonsaiOps, bonsai_linears, make_bonsai_ops

log = logging.getLogger("bonsai_image.loader")

DIFFUSION_FOLDER = "diffusion_models"
BONSAI_FOLDER = "bonsai"  # models/bonsai/<snapshot>/ holds downloaded releases (shared with the VAE and TE loaders)
SNAPSHOT_MARK = "/"  # combo entries for snapshot folders end with "/" so they never collide with file names
_SNAPSHOT_DEPTH = 2  # <snapshot>/ or <group>/<snapshot>/

COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# What the loader offers when bonsai_core.dispatch does not publish its own list.
_FALLBACK_BACKENDS = ("torch", "gemlite", "mlx", "triton_dequant", "fp8")


# ---------------------------------------------------------------------------
# model folders and listing
# ---------------------------------------------------------------------------


def ensure_model_folders() -> None:
    """Register ``models/bonsai`` with ``folder_paths`` (idempotent; extra_model_paths.yaml roots are kept)."""
    folder_paths.add_model_folder_path(BONSAI_FOLDER, os.path.join(folder_paths.models_dir, BONSAI_FOLDER))


_canonical_cache: dict[str, tuple[int, int, bool]] = {}  # full path -> (mtime_ns, size, is canonical)


def _is_canonical_cached(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    hit = _canonical_cache.get(path)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    ok = path.endswith(".safetensors") and is_canonical(path)
    _canonical_cache[path] = (st.st_mtime_ns, st.st_size, ok)
    return ok


def canonical_files() -> list[str]:
    """Names (relative to ``diffusion_models``) of the canonical Bonsai files there."""
    out = []
    for name in folder_paths.get_filename_list(DIFFUSION_FOLDER):
        full = folder_paths.get_full_path(DIFFUSION_FOLDER, name)
        if full and _is_canonical_cached(full):
            out.append(name)
    return out


def _formats_detect() -> Any:
    """``bonsai_core.formats.detect`` when the snapshot readers are available, else None."""
    try:
        from ..bonsai_core.formats import detect
    except ImportError as e:
        log.debug("snapshot folders not listed: bonsai_core.formats.detect unavailable (%s)", e)
        return None
    return detect


def _bonsai_roots() -> list[str]:
    ensure_model_folders()
    return folder_paths.get_folder_paths(BONSAI_FOLDER)


_snapshot_cache: dict[str, tuple[int, str | None]] = {}  # folder -> (mtime_ns, detected format or None)


def _snapshot_format(folder: Path, detect: Any) -> str | None:
    try:
        mtime = folder.stat().st_mtime_ns
    except OSError:
        return None
    hit = _snapshot_cache.get(str(folder))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    try:
        fmt: str | None = detect.detect_format(folder)[0]
    except (BonsaiFormatError, OSError, ValueError):
        fmt = None
    _snapshot_cache[str(folder)] = (mtime, fmt)
    return fmt


def snapshot_folders() -> list[str]:
    """Released snapshot folders under ``models/bonsai`` (entries end with ``/``)."""
    detect = _formats_detect()
    if detect is None:
        return []
    out: list[str] = []
    for root in _bonsai_roots():
        base = Path(root)
        if not base.is_dir():
            continue
        frontier = [base]
        for _ in range(_SNAPSHOT_DEPTH):
            nxt = []
            for d in frontier:
                for child in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if _snapshot_format(child, detect) is not None:
                        out.append(child.relative_to(base).as_posix() + SNAPSHOT_MARK)
                    else:
                        nxt.append(child)
            frontier = nxt
    return sorted(set(out))


def list_models() -> list[str]:
    return canonical_files() + snapshot_folders()


def resolve_model(name: str) -> Path:
    """Full path of a combo entry; a readable error when it does not exist or is not a name under the models folders."""
    if escapes_models_folder(name):
        raise BonsaiFormatError(name, None, "not a name under models/diffusion_models or models/bonsai (absolute paths and '..' are refused)")
    if name.endswith(SNAPSHOT_MARK):
        rel = name[: -len(SNAPSHOT_MARK)]
        for root in _bonsai_roots():
            cand = Path(root) / rel
            if cand.is_dir():
                return cand
        raise BonsaiFormatError(name, None, f"snapshot folder not found under {', '.join(_bonsai_roots())}")
    full = folder_paths.get_full_path(DIFFUSION_FOLDER, name)
    if full is None:
        raise BonsaiFormatError(name, None, f"file not found in models/{DIFFUSION_FOLDER}")
    return Path(full)


def open_bonsai(path: str | os.PathLike[str]) -> BonsaiCheckpoint:
    """A lazily read Bonsai checkpoint (BFL names, canonical codes) from a canonical file or a snapshot."""
    path = Path(path)
    if path.is_file():
        if not is_canonical(path):
            # load_canonical gives the precise reason (truncated, not safetensors, no Bonsai metadata).
            load_canonical(path)
            raise BonsaiFormatError(path, None, "not a canonical Bonsai file")
        return load_canonical(path)
    detect = _formats_detect()
    if detect is None:
        raise BonsaiFormatError(path, None, "released snapshot folders need bonsai_core.formats, which is not available in this install")
    return detect.open_checkpoint(path)


def source_fingerprint(path: Path) -> tuple[Any, ...]:
    """Changes whenever the bytes ComfyUI would load change: (mtime, size) of the file, or of every
    file of a snapshot's transformer pack."""
    if path.is_file():
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    detect = _formats_detect()
    target = path
    if detect is not None:
        try:
            target = detect.detect_format(path)[1]
        except (BonsaiFormatError, OSError, ValueError):
            target = path
    folder = target if target.is_dir() else target.parent
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            out.append((f.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


_problem_cache: dict[str, tuple[tuple[Any, ...], str | None]] = {}


def describe_problem(path: Path) -> str | None:
    """Header-level check used by prompt validation: None when the checkpoint opens, else the message.

    Cached per source fingerprint: validation runs on every queued prompt and opening a snapshot
    reads its pickle index."""
    try:
        fp = source_fingerprint(path)
    except OSError as e:
        return f"{path}: cannot read: {e}"
    hit = _problem_cache.get(str(path))
    if hit is not None and hit[0] == fp:
        return hit[1]
    try:
        open_bonsai(path)
        problem = None
    except BonsaiFormatError as e:
        problem = f"{e}{_convert_hint(path)}"
    except OSError as e:
        problem = f"{path}: cannot read: {e}"
    _problem_cache[str(path)] = (fp, problem)
    return problem


def _convert_hint(path: Path) -> str:
    if path.is_file():
        return ". Bonsai Load Model reads canonical files; convert a release with `python -m bonsai_core convert SRC OUT.safetensors`, or load a dense model with the stock Load Diffusion Model node."
    return ""


# ---------------------------------------------------------------------------
# building the ComfyUI model
# ---------------------------------------------------------------------------


def backend_choices() -> list[str]:
    """``auto`` then the backends ``bonsai_core.dispatch`` knows (its ``BACKENDS`` when published)."""
    names = getattr(dispatch, "BACKENDS", None) or getattr(dispatch, "BACKEND_NAMES", None) or _FALLBACK_BACKENDS
    return ["auto", *[n for n in names if n != "auto"]]


def bfl_state_dict(ckpt: BonsaiCheckpoint) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict ComfyUI loads (BFL keys; packed layers as ``weight`` + ``weight_scale``) and
    the logical parameter count (what the dense model would have)."""
    sd: dict[str, torch.Tensor] = {}
    params = 0
    for key, value in ckpt.items():
        if isinstance(value, PackedWeight):
            sd[key] = value.codes
            sd[scale_key(key)] = value.scales
            params += value.out_features * value.in_features
        else:
            sd[key] = value
            params += value.numel()
    return sd, params


def _resolve_dtype(name: str, params: int) -> torch.dtype:
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {list(COMPUTE_DTYPES)}")
    chosen = COMPUTE_DTYPES[name]
    if chosen is not None:
        return chosen
    # What stock UNETLoader picks for the dequantized bf16 file of the same model.
    supported = [torch.bfloat16, torch.float16, torch.float32]
    return comfy.model_management.unet_dtype(model_params=params, supported_dtypes=supported, weight_dtype=torch.bfloat16)


def _check_backend(path: Path, backend: str, bits: int, dtype: torch.dtype) -> None:
    """Refuse a backend that cannot run here at load time, with the backend's own reason."""
    if backend == "auto":
        return
    device = comfy.model_management.get_torch_device()
    try:
        reason = dispatch.unavailable_reason(backend, device, dtype, bits)
    except ValueError as e:  # unknown backend name
        raise BonsaiFormatError(path, None, f"{e}") from None
    if reason is not None:
        raise BonsaiFormatError(
            path, None, f"backend '{backend}' cannot run on {device} with {dtype}: {reason}. Pick 'auto' or another backend"
        ) from None


def load_bonsai_model(
    path: str | os.PathLike[str], backend: str = "auto", compute_dtype: str = "default", disable_dynamic: bool = False
) -> comfy.model_patcher.ModelPatcher:
    """Load a canonical file or snapshot folder as a stock ComfyUI ``ModelPatcher``.

    Also the patcher's ``cached_patcher_init`` factory: ComfyUI calls it again (with
    ``disable_dynamic=True``) when it needs an independent non-dynamic copy or a multi-GPU clone.
    """
    path = Path(path)
    ckpt = open_bonsai(path)
    bits = ckpt.meta.bits
    sd, params = bfl_state_dict(ckpt)
    dtype = _resolve_dtype(compute_dtype, params)
    _check_backend(path, backend, bits, dtype)
    ops = make_bonsai_ops(backend, bits)
    try:
        # disable_dynamic only exists in ComfyUI versions with dynamic VRAM; pass it only when asked.
        extra = {"disable_dynamic": True} if disable_dynamic else {}
        patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops, "dtype": dtype}, **extra)
    except RuntimeError as e:  # torch's load_state_dict collects per-layer messages from BonsaiOps
        raise BonsaiFormatError(path, None, f"ComfyUI could not load the weights: {e}") from None
    if patcher is None:
        raise BonsaiFormatError(
            path, None, "ComfyUI did not recognise the tensors as a FLUX.2 transformer (img_in/txt_in/double_stream_modulation_img)"
        )
    _check_loaded(path, patcher, len(ckpt.packed_shapes))
    install_lora_support(patcher)  # stock LoraLoader patches become unmerged branches (nodes/lora.py); clones inherit it
    patcher.cached_patcher_init = (load_bonsai_model, (str(path), backend, compute_dtype))
    log.info(
        "Bonsai %s model loaded from %s: %d packed linears, %.1f MB resident, compute %s, backend %s",
        ckpt.meta.variant,
        path.name,
        len(ckpt.packed_shapes),
        patcher.model_size() / 2**20,
        dtype,
        backend,
    )
    return patcher


def _check_loaded(path: Path, patcher: comfy.model_patcher.ModelPatcher, expected_packed: int) -> None:
    packed = 0
    for name, layer in bonsai_linears(patcher.model.diffusion_model):
        if layer.is_packed:
            packed += 1
        elif layer.weight is None:
            raise BonsaiFormatError(path, f"{name}.weight", "tensor is missing (the model ComfyUI built expects it)")
    if packed != expected_packed:
        raise BonsaiFormatError(
            path, None, f"{expected_packed} packed layers in the file, {packed} in the model ComfyUI built (unexpected geometry)"
        )


# ---------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------


class BonsaiModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiModelLoader",
            display_name="Load Bonsai Diffusion Model",
            category="Bonsai Image",
            description="Loads Bonsai Image 4B (binary or ternary FLUX.2 Klein 4B) with packed weights as a stock MODEL.",
            search_aliases=["bonsai", "flux2 klein binary", "ternary", "unet loader"],
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=list_models(),
                    tooltip="Canonical .safetensors in models/diffusion_models, or a released snapshot folder in models/bonsai (ends with /).",
                ),
                io.Combo.Input(
                    "backend",
                    options=backend_choices(),
                    default="auto",
                    tooltip="Low-bit matmul backend; auto picks the fastest that runs here.",
                ),
                io.Combo.Input(
                    "compute_dtype",
                    options=list(COMPUTE_DTYPES),
                    default="default",
                    tooltip="Activation dtype; default is what ComfyUI picks for this device.",
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        # Taking model_name here replaces ComfyUI's "value not in list" check with a precise message
        # for files that exist but are not loadable (a dense model, a truncated download).
        problem = name_problem(model_name, "model file or snapshot folder", "models/diffusion_models or models/bonsai")
        if problem is not None:
            return problem
        try:
            path = resolve_model(model_name)
        except BonsaiFormatError as e:
            return str(e)
        problem = describe_problem(path)
        return True if problem is None else problem

    @classmethod
    def fingerprint_inputs(cls, model_name: str, backend: str, compute_dtype: str) -> Any:
        # A re-converted file under the same name must reload.
        try:
            fp = source_fingerprint(resolve_model(model_name))
        except (BonsaiFormatError, OSError):
            return None
        return (model_name, fp, backend, compute_dtype)

    @classmethod
    def execute(cls, model_name: str, backend: str, compute_dtype: str) -> io.NodeOutput:
        return io.NodeOutput(load_bonsai_model(resolve_model(model_name), backend, compute_dtype))


ensure_model_folders()

NODES: list[type[io.ComfyNode]] = [BonsaiModelLoader]

__all__ = ["NODES", "BonsaiModelLoader", "BonsaiOps", "bfl_state_dict", "list_models", "load_bonsai_model", "open_bonsai"]
