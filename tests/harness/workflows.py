"""Tiny models under the exact names the shipped workflows use, and helpers to run those workflows.

The workflows reference what the downloader produces (snapshots in ``models/bonsai/<repo>/``, a
canonical transformer in ``models/bonsai/``); here the same names hold tiny synthetic
fixtures (KLEIN_TINY transformer, tiny Qwen3 TE, reduced-decoder FLUX.2 VAE) so every workflow runs
on CPU in seconds.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .model_folders import MODEL_KINDS, models_root  # noqa: F401  (re-exported: the workflow tests install fixtures in their own root)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
TEST_SIZE = 128  # every workflow is run at 128x128 (overridden through the API graph)
EDIT_INPUT_SIZES = {"bonsai_edit_input_1.png": (256, 256), "bonsai_edit_input_2.png": (192, 128)}


def ui_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def api_workflows() -> list[Path]:
    return sorted(API_DIR.glob("*.json"))


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def model_names(api: dict[str, Any]) -> dict[str, set[str]]:
    """Model references in an API workflow by loader input: snapshots, canonical files, TE and VAE folders, LoRAs."""
    out: dict[str, set[str]] = {}
    for node in api.values():
        for key in ("snapshot", "model_name", "text_encoder", "vae_folder", "lora_name"):
            if key in node["inputs"] and isinstance(node["inputs"][key], str):
                out.setdefault(key, set()).add(node["inputs"][key])
    return out


def install_fixtures(models_dir: Path, input_dir: Path, comfy_root: Path) -> None:
    """Write tiny fixtures under every model name the shipped workflows use, and the edit input images."""
    from bonsai_tools.synth import SNAPSHOT_LAYOUTS, make_fixture, make_snapshot_fixture, snapshot_repo_name

    wanted: dict[str, set[str]] = {}
    for p in api_workflows():
        for k, v in model_names(load_json(p)).items():
            wanted.setdefault(k, set()).update(v)
    known = {snapshot_repo_name(variant, layout): (variant, layout) for variant in ("binary", "ternary") for layout in SNAPSHOT_LAYOUTS}
    tokenizer = comfy_root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    snapshots = {s.rstrip("/") for s in wanted.get("snapshot", set())}
    # Separate loaders point into snapshots too (".../vae", "bonsai/<repo>/text_encoder-...").
    for v in wanted.get("vae_folder", set()) | {t.removeprefix("bonsai/") for t in wanted.get("text_encoder", set())}:
        snapshots.add(v.split("/")[0])
    for name in sorted(snapshots):
        if name not in known:
            raise AssertionError(f"a workflow references snapshot {name!r}, which no release has (known: {sorted(known)})")
        if not (models_dir / "bonsai" / name).is_dir():
            variant, layout = known[name]
            make_snapshot_fixture(variant, layout, models_dir / "bonsai", size="tiny", seed=1, tokenizer_src=tokenizer)
    for name in sorted(wanted.get("model_name", set())):
        m = re.fullmatch(r"bonsai-image-(binary|ternary)-4B\.safetensors", name)
        if m is None:
            raise AssertionError(f"a workflow references {name!r}, not a name the downloader produces")
        # where the downloader's --to-canonical writes it (the stock Load Diffusion Model does not list models/bonsai)
        if not (models_dir / "bonsai" / name).is_file():
            make_fixture(m.group(1), "tiny", "canonical", 2, models_dir / "bonsai" / name)
    for i, name in enumerate(sorted(wanted.get("lora_name", set()))):  # LoRA workflows: tiny synthetic LoRAs
        if not (models_dir / "loras" / name).is_file():
            from bonsai_tools.synth import make_lora_fixture

            make_lora_fixture(models_dir / "loras" / name, "tiny", rank=4, seed=i)
    input_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h)) in enumerate(sorted(EDIT_INPUT_SIZES.items())):
        make_test_image(input_dir / name, w, h, seed=i)


def make_test_image(path: Path, width: int, height: int, seed: int) -> None:
    """A structured image (gradients + blocks) so the VAE encoder sees more than noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x / width, y / height, ((x // 32 + y // 32) % 2) * 0.8], axis=-1)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)


def for_test(api: dict[str, Any], prefix: str, size: int = TEST_SIZE) -> dict[str, Any]:
    """The API graph resized to ``size`` x ``size`` and saving under ``prefix``; nothing else changes.

    Text to image: the latent, scheduler and preset sampler sizes. Edit graphs take their size from
    reference 1 (256x256 on disk), so its scaling is set to ``size``^2 pixels. Tiled decoding gets
    96 px tiles so a 128 px image is really decoded in several overlapping tiles.
    """
    g = copy.deepcopy(api)
    for node in g.values():
        t, inputs = node["class_type"], node["inputs"]
        if t in ("EmptyFlux2LatentImage", "Flux2Scheduler", "BonsaiSampler"):
            for k in ("width", "height"):
                if not isinstance(inputs.get(k), list):
                    inputs[k] = size
        elif t == "ImageScaleToTotalPixels":
            inputs["megapixels"] = size * size / (1024 * 1024)
        elif t == "VAEDecodeTiled":
            inputs.update(tile_size=96, overlap=32)
        elif t == "SaveImage":
            inputs["filename_prefix"] = prefix
    return g


def saved_images(output_dir: Path, prefix: str) -> list[Path]:
    return sorted(output_dir.glob(f"{prefix}_*.png"))


def image_stats(path: Path) -> tuple[tuple[int, int], float, int]:
    """(size, pixel std in 0..255, number of distinct values)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
        return im.size, float(arr.std()), int(len(np.unique(arr)))


def environ_without_tracking(home: Path) -> dict[str, str]:
    """Environment for comfy-cli subprocesses: telemetry off (no consent prompt, nothing sent), no PyPI
    update check, and a throwaway HOME so the user's comfy-cli config is neither read nor written."""
    env = dict(os.environ)
    env.update({"DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "COMFY_NO_UPDATE_CHECK": "1", "NO_COLOR": "1", "HOME": str(home)})
    return env
