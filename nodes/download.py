"""Download a released Bonsai Image 4B repo from inside ComfyUI (``bonsai_core.download``).

Files go to ``models/bonsai/<repo-name>/`` (and, optionally, the canonical transformer to
``models/diffusion_models/``), verified against the Hub's sizes and hashes. ComfyUI's progress bar
shows the bytes; "Cancel" stops the transfer (completed files are kept, the next run continues).
Offline, the node fails with one message saying where to put the files by hand.
"""

from __future__ import annotations

import logging
import os

import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..bonsai_core.download import BACKENDS, COMPONENTS, VARIANT_BITS, DownloadError, download

log = logging.getLogger(__name__)

_UNIT = 1 << 10  # progress in KiB: fine-grained for small files, ints the UI handles for 3 GB


def _bonsai_dir() -> str:
    """``models/bonsai`` registered as a model folder (idempotent); the first of its roots."""
    folder_paths.add_model_folder_path("bonsai", os.path.join(folder_paths.models_dir, "bonsai"))
    return folder_paths.get_folder_paths("bonsai")[0]


def _diffusion_models_dir() -> str:
    """The first registered ``diffusion_models`` folder actually named so (stock lists ``unet/`` first)."""
    paths = folder_paths.get_folder_paths("diffusion_models")
    return next((p for p in paths if os.path.basename(os.path.normpath(p)) == "diffusion_models"), paths[0])


class BonsaiDownloadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiDownloadModel",
            display_name="Download Bonsai Image 4B",
            category="loaders/bonsai",
            description=(
                "Downloads prism-ml/bonsai-image-<variant>-4B-<backend> from Hugging Face into models/bonsai/ and verifies every file. "
                "Refresh the browser (R) afterwards so the loaders list it."
            ),
            inputs=[
                io.Combo.Input("variant", options=sorted(VARIANT_BITS), default="ternary", tooltip="ternary = 2-bit, binary = 1-bit"),
                io.Combo.Input(
                    "backend",
                    options=["auto", *BACKENDS],
                    default="auto",
                    tooltip="auto: gemlite on CUDA, mlx on Apple silicon, unpacked otherwise",
                ),
                io.Boolean.Input("text_encoder", default=True, tooltip="also download the 4-bit text encoder"),
                io.Boolean.Input("vae", default=True, tooltip="also download the VAE"),
                io.Boolean.Input(
                    "to_canonical", default=False, tooltip="also write models/diffusion_models/bonsai-image-<variant>-4B.safetensors"
                ),
            ],
            outputs=[io.String.Output(display_name="snapshot_dir")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, variant: str, backend: str, text_encoder: bool, vae: bool, to_canonical: bool) -> io.NodeOutput:
        components = tuple(c for c, on in zip(COMPONENTS, (True, text_encoder, vae)) if on)
        bar: comfy.utils.ProgressBar | None = None

        def progress(done: int, total: int, name: str) -> None:
            nonlocal bar
            if bar is None:
                bar = comfy.utils.ProgressBar(max(1, total // _UNIT))
            # update_absolute also checks for ComfyUI's interrupt, which aborts the transfer
            bar.update_absolute(done // _UNIT, max(1, total // _UNIT))

        try:
            result = download(
                variant,
                backend,
                folder_paths.models_dir,
                components=components,
                to_canonical=to_canonical,
                progress=progress,
                bonsai_dir=_bonsai_dir(),
                diffusion_models_dir=_diffusion_models_dir(),
            )
        except DownloadError as e:
            raise RuntimeError(str(e)) from e
        log.info("Bonsai download complete: %s (%d files, %.2f GB)", result.local_dir, len(result.files), result.total_bytes / 1e9)
        return io.NodeOutput(str(result.local_dir))


NODES = [BonsaiDownloadModel]
