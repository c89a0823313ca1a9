"""``BonsaiTextEncoderLoader``: a released Qwen3-4B text encoder folder as a stock ComfyUI ``CLIP``.

The 4-bit folders (``text_encoder-hqq-4bit``, ``text_encoder-mlx-4bit``) stay 4-bit in memory
(:mod:`.te_clip` builds ComfyUI's own Klein text encoder on packed operations); the unpacked
releases' bf16 ``text_encoder/`` loads dense with ComfyUI's stock operations. Either way the
result is what the stock CLIP loader returns for Klein, so ``CLIPTextEncode`` works unchanged.

The dropdown lists only folders whose ``config.json`` is a Qwen3 language-model config with
weights next to it (a release's ``vae/`` and ``transformer/`` also hold a config.json and a
safetensors file, but a diffusers one), checked cheaply and cached per fingerprint by
:mod:`.folders`, which also guards every name at validation and again at execution.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import comfy.sd
import comfy.text_encoders.flux
import torch
from comfy_api.latest import io

from ..bonsai_core.bounded import plain_file_name, read_json_object
from ..bonsai_core.errors import BonsaiFormatError
from ..bonsai_core.escape import escape_name, escaping_logger
from ..bonsai_core.safetensors_io import read_header
from ..bonsai_core.te_formats import (
    HQQ_FILE,
    MLX_FILE,
    TE_FOLDER_NAMES,
    find_tokenizer_dir,
    read_dense_te,
    read_te,
    te_layout,
)
from ..bonsai_core.torch_archive import check_archive
from . import folders, installed
from .te_clip import (  # noqa: F401  (re-exported: tests and tools build reference CLIPs through this module)
    MODEL_NAME,
    ConfiguredQwen3,
    ConfiguredQwen3Model,
    Packed4BitLinear,
    Packed4BitOps,
    PackedOrDenseEmbedding,
    build_clip,
    clip_model_options,
    llama_config,
    te_state_dict,
)

log = escaping_logger(__name__)

CATEGORY = "Bonsai Image"
TE_KINDS = (folders.BONSAI, "text_encoders")  # labels are "<kind>/<folder relative to that root>"
_LIST_DEPTH = 3  # bonsai/<group>/<repo>/text_encoder-*-4bit
PROBE_PROMPT = "a red fox, 3 birds & a café at dusk"
WHAT = "Bonsai text encoder folder"
_QWEN3_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")


def load_packed_clip(
    path: str | os.PathLike[str], *, check_tokenizer: bool = True, extra_options: dict[str, Any] | None = None
) -> comfy.sd.CLIP:
    """Read a released 4-bit TE folder (or snapshot root) and return a stock ``CLIP`` on packed weights."""
    te = read_te(path)
    if check_tokenizer:
        tok_dir = find_tokenizer_dir(te.path)
        if tok_dir is None:
            log.info("%s ships no tokenizer; using ComfyUI's bundled Qwen tokenizer", te.path)
        else:
            verify_tokenizer(str(tok_dir))
    dense_dtypes = {t.dtype for k, t in te.dense.items() if "norm" in k}
    dtype = dense_dtypes.pop() if len(dense_dtypes) == 1 else torch.bfloat16
    clip = build_clip(te.config, te_state_dict(te), operations=Packed4BitOps, dtype=dtype, extra_options=extra_options)
    log.info(
        "Bonsai TE %s (%s): %.1f MiB packed (dense bf16 would be %.1f MiB)",
        te.path,
        te.layout,
        te.packed_nbytes / 2**20,
        te.dense_equivalent_nbytes() / 2**20,
    )
    return clip


# ----------------------------------------------------------------------------- dense bf16 (unpacked releases)

DENSE_TE_FOLDER = "text_encoder"  # diffusers pipeline layout of the unpacked releases
_ST_INDEX = "model.safetensors.index.json"


def _te_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` when it describes a Qwen3 language model (bounded read), else ValueError.

    A diffusers component (``vae/``, ``transformer/``) carries ``_class_name``; a Qwen3 config carries
    ``model_type``/``architectures`` naming Qwen3 and the integer geometry the loaders need."""
    cfg = read_json_object(folder / "config.json")
    assert cfg is not None
    if "_class_name" in cfg:
        raise ValueError(f"{escape_name(folder)}: a diffusers {cfg['_class_name']!r} folder, not a Qwen3 text encoder")
    lm = cfg.get("text_config", cfg)  # some exports nest the language model config (VL-style)
    if not isinstance(lm, dict):
        raise ValueError(f"{escape_name(folder / 'config.json')}: text_config is not an object")
    names = [str(cfg.get("model_type", "")), str(lm.get("model_type", ""))]
    archs = cfg.get("architectures")
    names += [str(a) for a in archs] if isinstance(archs, list) else []
    if not any(n.lower().startswith("qwen3") for n in names):
        raise ValueError(f"{escape_name(folder / 'config.json')}: not a Qwen3 config (model_type/architectures)")
    bad = [k for k in _QWEN3_INTS if not isinstance(lm.get(k), int) or isinstance(lm.get(k), bool)]
    if bad:
        raise ValueError(f"{escape_name(folder / 'config.json')}: lacks integer {bad[0]!r}")
    return cfg


def _dense_problem(te: Path) -> str | None:
    cfg = _te_config(te)
    if (te / HQQ_FILE).exists() or "quantization" in cfg or "quantization_config" in cfg:
        return f"{te}: a 4-bit text encoder, not a dense one"
    if not ((te / _ST_INDEX).is_file() or any(te.glob("*.safetensors"))):
        return f"{te}: no .safetensors weights"
    return None


def is_dense_te(te: Path) -> bool:
    """A bf16 HF Qwen3 folder (safetensors, config without a quantization section, no ``qmodel.pt``).

    Checked before :func:`te_layout`, which takes any ``model.safetensors`` folder for MLX 4-bit."""
    return folders.is_ok("te-dense", te, _dense_problem)


def _te_problem(folder: Path) -> str | None:
    """None when the TE loader can load ``folder``. Cheap, as for the transformer and the VAE: the config,
    and each weight file's size against its own header or zip directory (a truncated download is refused
    here, at listing and at queue time, not half-way through loading)."""
    if not (folder / "config.json").is_file():
        sub = _te_subfolder(folder)
        if sub is not None:
            return f"{folder}: a release folder, not a text encoder folder: pick its text encoder {sub!r}"
        return f"{folder}: no config.json"
    _te_config(folder)
    layout = te_layout(folder)
    if layout is None and not is_dense_te(folder):
        return f"{folder}: no text encoder weights ({HQQ_FILE}, model.safetensors or bf16 shards)"
    for f in te_weight_files(folder, layout):
        if not f.is_file():
            return f"{f}: file not found (incomplete download?)"
        if f.suffix == ".safetensors":
            read_header(f)  # offsets against the file size: "truncated" names the file
        else:
            check_archive(f)  # the zip directory sits at the end: a cut file has none
    return None


def te_weight_files(folder: Path, layout: str | None) -> list[Path]:
    """The weight files a TE folder's loader reads: HQQ's archive, MLX's safetensors, or the bf16 shards."""
    if layout == "hqq":
        return [folder / HQQ_FILE]
    index = folder / (_ST_INDEX if layout is None else MLX_FILE + ".index.json")
    single = folder / (MLX_FILE if layout == "mlx" else "model.safetensors")
    if layout == "mlx" and single.is_file():
        return [single]
    if index.is_file():
        weight_map = (read_json_object(index) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            raise BonsaiFormatError(index, "weight_map", "the shard index has no weight_map object")
        return sorted({folder / plain_file_name(index, f, k) for k, f in weight_map.items()})
    return sorted(folder.glob("*.safetensors"))


def _te_subfolder(folder: Path) -> str | None:
    """The label of a release folder's text encoder, for a snapshot root given where a TE folder is wanted."""
    for name in (*TE_FOLDER_NAMES, DENSE_TE_FOLDER):
        if (folder / name / "config.json").is_file():
            for kind in TE_KINDS:
                for root in folders.roots(kind):
                    if root in folder.parents or root == folder:
                        return f"{kind}/{(folder / name).relative_to(root).as_posix()}"
            return name
    return None


def is_te_folder(folder: Path) -> bool:
    return folders.is_ok("te-folder", folder, _te_problem)


def te_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` does not load as a text encoder (config, weight files present and not truncated), or None (cached)."""
    return folders.check("te-folder", folder, _te_problem)


def dense_te_folder(folder: Path) -> Path | None:
    """The unpacked release's bf16 ``text_encoder/`` (HF Qwen3, safetensors, no quantization config), or None."""
    te = folder / DENSE_TE_FOLDER
    return te if is_dense_te(te) else None


def load_dense_clip(te_dir: Path) -> comfy.sd.CLIP:
    """A bf16 HF ``Qwen3ForCausalLM`` folder (one file or index + shards) as the stock Klein CLIP.

    :func:`bonsai_core.te_formats.read_dense_te` checks it as strictly as the packed layouts (each
    shard opened once, exact key set, no key in two shards, every value finite, named on failure);
    the weights then go to :func:`build_clip` with ComfyUI's stock dense operations.
    """
    config, sd = read_dense_te(te_dir)
    dtype = sd["model.norm.weight"].dtype
    log.info("Bonsai TE: dense %s text encoder from %s", dtype, te_dir)
    return build_clip(config, sd, operations=None, dtype=dtype)


def load_clip(te_dir: Path) -> comfy.sd.CLIP:
    """A listed TE folder as CLIP: the unpacked releases' bf16 ``text_encoder/`` dense, the 4-bit ones packed."""
    if not is_dense_te(te_dir):
        return load_packed_clip(te_dir)
    tok_dir = te_dir.parent / "tokenizer"  # diffusers layout: the tokenizer is a sibling of text_encoder/
    if tok_dir.is_dir():  # as for the 4-bit folders: ComfyUI's tokenizer must agree with the shipped one
        verify_tokenizer(str(tok_dir))
    return load_dense_clip(te_dir)


# ----------------------------------------------------------------------------- tokenizer check


@functools.lru_cache(maxsize=8)
def verify_tokenizer(tokenizer_dir: str) -> list[int]:
    """Check that ComfyUI's ``KleinTokenizer`` gives the folder tokenizer's ids for the Klein prompt.

    The probe is ComfyUI's own fixed Klein template around :data:`PROBE_PROMPT` (one user message,
    generation prompt, thinking off); the folder's tokenizer turns that text into ids, which are then
    compared. The folder's ``chat_template`` is never rendered: encoding a prompt does not need it
    (ComfyUI's template is what encodes), and it is Jinja from a downloaded file, which a nested loop
    turns into a hang that ComfyUI's interrupt cannot stop. Returns the ids, or ``[]`` when the shipped
    tokenizer cannot be loaded (logged: ComfyUI's tokenizer is what encodes either way). A disagreement
    is an error: it would silently change every embedding.
    """
    from transformers import AutoTokenizer

    text = comfy.text_encoders.flux.KleinTokenizer().llama_template.format(PROBE_PROMPT)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        want = tok(text, add_special_tokens=False)["input_ids"]
    except Exception as e:  # transformers raises many types for broken tokenizer folders
        log.warning(
            "%s: cannot load the shipped tokenizer to cross-check ComfyUI's Klein tokenizer (%s: %s)", tokenizer_dir, type(e).__name__, e
        )
        return []
    klein = comfy.text_encoders.flux.KleinTokenizer()
    got = [t for t, _w in klein.tokenize_with_weights(PROBE_PROMPT)[MODEL_NAME][0]]
    got = got[: len(want)] if got[len(want) :] == [151643] * (len(got) - len(want)) else got
    if got != want:
        raise BonsaiFormatError(
            tokenizer_dir,
            None,
            f"ComfyUI's Klein tokenizer disagrees with the shipped tokenizer on the Klein-templated probe: {got[:24]} vs {want[:24]}",
        )
    return want


# ----------------------------------------------------------------------------- listing and the node


def list_te_folders() -> dict[str, Path]:
    """``label -> folder`` for every loadable TE folder under ``models/bonsai`` and ``models/text_encoders``."""
    out: dict[str, Path] = {}
    for kind in TE_KINDS:
        for root in folders.roots(kind):
            for e in installed.walk(root, _LIST_DEPTH, descend=lambda e: not is_te_folder(e.path)):
                # a part of a release whose download was interrupted is not offered: the release is not ready
                if e.is_dir and is_te_folder(e.path) and not installed.is_interrupted(e.path):
                    out.setdefault(f"{kind}/{e.rel}", e.path)
    return dict(sorted(out.items()))


def resolve_label(label: object) -> Path:
    """The folder of a combo label ``<kind>/<relative folder>``: ``ValueError`` when refused, ``FileNotFoundError`` when absent."""
    where = " or ".join(f"models/{k}" for k in TE_KINDS)
    name = folders.guard(label, WHAT, where)
    kind, _, rel = name.partition("/")
    if kind not in TE_KINDS or not rel.strip("/"):
        raise ValueError(f"{name!r}: not a {WHAT} name (labels start with {' or '.join(k + '/' for k in TE_KINDS)})")
    found = folders.find((kind,), rel.rstrip("/"), want_dir=True)
    if found is None:
        raise FileNotFoundError(folders.missing(name, WHAT, (kind,)))
    return found


def validation_problem(label: object) -> str | None:
    try:
        folder = resolve_label(label)
    except ValueError as e:
        return str(e)
    except FileNotFoundError as e:
        kind = label.partition("/")[0] if isinstance(label, str) else folders.BONSAI
        return installed.not_found(str(e), str(label).partition("/")[2], (kind,), list_te_folders())
    problem = te_folder_problem(folder)
    return installed.with_resume(problem, folder) if problem is not None else None


class BonsaiTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BonsaiTextEncoderLoader",
            display_name="Bonsai Load Text Encoder",
            category=CATEGORY,
            description=(
                "Loads the released Qwen3-4B text encoder (text_encoder-hqq-4bit or text_encoder-mlx-4bit, weights stay 4-bit "
                "in memory; or the unpacked releases' bf16 text_encoder) as a FLUX.2 Klein CLIP for the stock CLIP Text Encode node."
            ),
            search_aliases=["bonsai", "qwen3", "clip loader", "text encoder"],
            inputs=[
                io.Combo.Input(
                    "text_encoder",
                    options=folders.cached_listing("text_encoders", TE_KINDS, lambda: list(list_te_folders()), []),
                    tooltip=(
                        "models/bonsai/<repo>/text_encoder-*-4bit (or text_encoder/ of an unpacked release) or a Qwen3 folder in "
                        f"models/text_encoders. Empty? {folders.models_hint()}."
                    ),
                )
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def validate_inputs(cls, text_encoder: str | None) -> bool | str:
        # Replaces ComfyUI's "not in [...]" check: one line saying what is wrong or missing and how to get it.
        if text_encoder is None:
            return True  # linked: ComfyUI passes None at queue time; execute resolves and guards the real value
        problem = validation_problem(text_encoder)
        return True if problem is None else problem

    @classmethod
    def fingerprint_inputs(cls, text_encoder: str) -> Any:
        try:
            return (text_encoder, folders.fingerprint(resolve_label(text_encoder)))
        except (ValueError, OSError):
            return None  # execute raises the precise error

    @classmethod
    def execute(cls, text_encoder: str) -> io.NodeOutput:
        # Resolved (and guarded) here too: a name arriving through a link never reached validate_inputs.
        return io.NodeOutput(load_clip(resolve_label(text_encoder)))


NODES: list[type[io.ComfyNode]] = [BonsaiTextEncoderLoader]

folders.prewarm_listing("text_encoders", TE_KINDS, lambda: list(list_te_folders()))
