"""``BonsaiPipelineLoader``: one released Bonsai snapshot folder -> MODEL, CLIP, VAE.

A downloaded release (``models/bonsai/<repo-name>/``) holds everything a FLUX.2 Klein graph
needs: the packed transformer (``transformer-gemlite-int*/``, ``transformer-packed-mflux/`` or
``transformer/``), the Qwen3 text encoder (4-bit ``text_encoder-hqq-4bit/`` or
``text_encoder-mlx-4bit/``; bf16 ``text_encoder/`` in the unpacked releases) and the FLUX.2 VAE
(``vae/``). This node calls the three loaders' own functions on that folder, so the outputs are
exactly what the separate loader nodes give: stock MODEL / CLIP / VAE for CLIPTextEncode,
CFGGuider, SamplerCustomAdvanced, VAEDecode, LoRA.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import comfy.model_patcher
import comfy.sd
import comfy.utils
from comfy_api.latest import io

from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.safetensors_io import read_header
from ..bonsai_core.te_formats import expected_dense_shapes, expected_linear_shapes, resolve_te_folder
from . import model_loader, text_encoder, vae
from ._paths import name_problem

log = logging.getLogger("bonsai_image.pipeline")


DENSE_TE_FOLDER = "text_encoder"  # diffusers pipeline layout of the unpacked releases
_ST_INDEX = "model.safetensors.index.json"


def dense_te_folder(folder: Path) -> Path | None:
    """The unpacked release's bf16 ``text_encoder/`` (HF Qwen3, safetensors, no quantization config), or None."""
    te = folder / DENSE_TE_FOLDER
    cfg_path = te / "config.json"
    if not cfg_path.is_file() or (te / "qmodel.pt").exists():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(cfg, dict) or "quantization" in cfg or "quantization_config" in cfg:
        return None
    return te if (te / _ST_INDEX).is_file() or any(te.glob("*.safetensors")) else None


def load_dense_clip(te_dir: Path) -> comfy.sd.CLIP:
    """A bf16 HF ``Qwen3ForCausalLM`` folder (one file or index + shards) as the stock Klein CLIP.

    The shards are checked (truncation, every expected tensor and shape, named on failure) and then
    handed to the text-encoder node's ``build_clip`` with ComfyUI's stock dense operations.
    """
    cfg_path = te_dir / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BonsaiFormatError(cfg_path, None, f"cannot read the text encoder config: {e}") from e
    index = te_dir / _ST_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise BonsaiFormatError(index, None, f"cannot read the shard index: {e}") from e
        files = sorted({te_dir / f for f in weight_map.values()})
    else:
        files = sorted(te_dir.glob("*.safetensors"))
    where: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        if not f.is_file():
            raise BonsaiFormatError(f, None, "shard listed in the index is missing (incomplete download?)")
        entries, _meta = read_header(f)  # clear errors for truncated or corrupt shards
        where.update({k: (f, tuple(e["shape"])) for k, e in entries.items()})
    try:
        expected = {**expected_dense_shapes(config), **expected_linear_shapes(config)}
    except (KeyError, TypeError) as e:
        raise BonsaiFormatError(cfg_path, None, f"not a Qwen3 config (missing {e})") from e
    for key, shape in expected.items():
        if key not in where:
            raise BonsaiFormatError(files[0] if files else te_dir, key, "tensor is missing from the text encoder")
        if where[key][1] != shape:
            raise BonsaiFormatError(where[key][0], key, f"shape {list(where[key][1])}, expected {list(shape)}")
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(comfy.utils.load_torch_file(str(f), safe_load=True))
    sd = {k: v for k, v in sd.items() if not k.startswith("lm_head.")}  # klein_te uses hidden states, never the head
    dtype = sd["model.norm.weight"].dtype
    log.info("Bonsai pipeline: dense %s text encoder from %s (%d shards)", dtype, te_dir, len(files))
    return text_encoder.build_clip(config, sd, operations=None, dtype=dtype)


def find_text_encoder(folder: Path) -> Path | None:
    """The snapshot's text encoder folder: bf16 ``text_encoder/`` (unpacked) or ``text_encoder-*-4bit/``, or None."""
    dense = dense_te_folder(folder)
    if dense is not None:
        return dense
    try:
        te = resolve_te_folder(folder)
    except BonsaiFormatError:
        return None
    return te if te != folder else None  # a bare TE folder is not a snapshot


def _is_pipeline_snapshot(folder: Path) -> bool:
    """A snapshot the pipeline can load: a transformer pack (model loader lists it) plus a VAE and a text encoder."""
    return vae.is_vae_dir(folder / vae.VAE_SUBDIR) and find_text_encoder(folder) is not None


def list_snapshots() -> list[str]:
    """Snapshot folders (model loader names, ending with ``/``) that hold a transformer, a text encoder and a VAE."""
    out = []
    for name in model_loader.snapshot_folders():
        try:
            if _is_pipeline_snapshot(model_loader.resolve_model(name)):
                out.append(name)
        except (BonsaiFormatError, OSError):
            continue
    return out


def load_pipeline(
    snapshot: str | Path, backend: str = "auto", compute_dtype: str = "default"
) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE from one snapshot folder (a combo name from :func:`list_snapshots` or a path)."""
    folder = Path(snapshot) if Path(snapshot).is_absolute() else model_loader.resolve_model(str(snapshot))
    if not folder.is_dir():
        raise BonsaiFormatError(folder, None, "not a snapshot folder")
    vae_dir = folder / vae.VAE_SUBDIR
    if not vae.is_vae_dir(vae_dir):
        raise BonsaiFormatError(vae_dir, None, f"the snapshot has no FLUX.2 VAE ({vae.VAE_CONFIG_NAME} + {vae.VAE_WEIGHTS_NAME})")
    te_dir = find_text_encoder(folder)
    if te_dir is None:
        raise BonsaiFormatError(
            folder, None, "the snapshot has no text encoder folder (text_encoder-hqq-4bit/, text_encoder-mlx-4bit/ or text_encoder/)"
        )
    # Header-only VAE checks first: a broken vae/ should fail before the transformer is loaded.
    vae.read_vae_config(vae_dir)
    vae.check_vae_weights(vae_dir / vae.VAE_WEIGHTS_NAME)
    model = model_loader.load_bonsai_model(folder, backend, compute_dtype)
    if dense_te_folder(folder) == te_dir:
        if (folder / "tokenizer").is_dir():  # as the 4-bit loader does: ComfyUI's tokenizer must agree with the shipped one
            text_encoder.verify_tokenizer(str(folder / "tokenizer"))
        clip = load_dense_clip(te_dir)
    else:
        clip = text_encoder.load_packed_clip(te_dir)
    vae_obj = vae.load_flux2_vae(vae_dir)
    log.info("Bonsai pipeline loaded from %s (text encoder %s)", folder, te_dir.name)
    return model, clip, vae_obj


class BonsaiPipelineLoader(io.ComfyNode):
    """The whole release in one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiPipelineLoader",
            display_name="Load Bonsai Pipeline (snapshot folder)",
            category="Bonsai Image",
            description="Loads a downloaded Bonsai Image release folder (models/bonsai/<repo>/) as MODEL, CLIP and VAE.",
            search_aliases=["bonsai", "flux2 klein", "checkpoint loader", "pipeline"],
            inputs=[
                io.Combo.Input(
                    "snapshot",
                    options=list_snapshots(),
                    tooltip="A release folder under models/bonsai with transformer, text encoder and vae.",
                ),
                io.Combo.Input(
                    "backend",
                    options=model_loader.backend_choices(),
                    default="auto",
                    tooltip="Low-bit matmul backend; auto picks the fastest that runs here.",
                ),
                io.Combo.Input(
                    "compute_dtype",
                    options=list(model_loader.COMPUTE_DTYPES),
                    default="default",
                    tooltip="Activation dtype of the transformer.",
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, snapshot: str) -> bool | str:
        # Taking snapshot here replaces ComfyUI's "value not in list" check with a precise message at
        # queue time (transformer header, VAE header), as the model loader node does for its files.
        problem = name_problem(snapshot, "snapshot folder", "models/bonsai")
        if problem is not None:
            return problem
        try:
            folder = model_loader.resolve_model(snapshot)
            problem = model_loader.describe_problem(folder)
            if problem is not None:
                return problem
            vae.read_vae_config(folder / vae.VAE_SUBDIR)
            vae.check_vae_weights(folder / vae.VAE_SUBDIR / vae.VAE_WEIGHTS_NAME)
        except (BonsaiFormatError, OSError) as e:
            return str(e)
        if find_text_encoder(folder) is None:
            return f"{folder}: the snapshot has no text encoder folder (text_encoder-hqq-4bit/, text_encoder-mlx-4bit/ or text_encoder/)"
        return True

    @classmethod
    def fingerprint_inputs(cls, snapshot: str, backend: str, compute_dtype: str) -> Any:
        # A re-downloaded snapshot under the same name must reload.
        try:
            st = model_loader.resolve_model(snapshot).stat()
        except (BonsaiFormatError, OSError):
            return None
        return (snapshot, st.st_mtime_ns, backend, compute_dtype)

    @classmethod
    def execute(cls, snapshot: str, backend: str, compute_dtype: str) -> io.NodeOutput:
        return io.NodeOutput(*load_pipeline(snapshot, backend, compute_dtype))


NODES: list[type[io.ComfyNode]] = [BonsaiPipelineLoader]
