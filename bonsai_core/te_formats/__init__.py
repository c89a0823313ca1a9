"""The released 4-bit Qwen3-4B text encoders, read into one packed in-memory form.

Two layouts ship (docs/FORMAT.md, "Text encoder"):

* ``text_encoder-hqq-4bit/`` (CUDA releases): ``qmodel.pt``, HQQ ``4bit_u8`` with group size 64,
  ``W = (q - zero) * scale`` -- :mod:`.hqq`;
* ``text_encoder-mlx-4bit/`` (Apple releases): ``model.safetensors`` with mlx-lm names,
  ``W = scales * q + biases`` -- :mod:`.mlx`.

Both become :class:`Packed4Bit` codes plus dense tensors under HF ``Qwen3ForCausalLM`` names
(:mod:`.packed`, the one home of the two dequantization formulas); the unpacked releases' dense
bf16 ``text_encoder/`` is read and checked by :mod:`.dense`; :mod:`.config` bounds the
geometry a ``config.json`` may declare and lists the tensors it implies; :mod:`.folders` finds
the TE inside a snapshot. Writers for both layouts (test fixtures) live in ``bonsai_tools``.
"""

from __future__ import annotations

from .config import LAYER_NORMS, LINEARS, check_inventory, expected_dense_shapes, expected_linear_shapes, head_dim, read_config, rope_theta
from .dense import read_dense_te
from .folders import TE_FOLDER_NAMES, find_tokenizer_dir, read_te, resolve_te_folder, te_layout
from .hqq import HQQ_FILE, codes_to_hqq_packed, hqq_unpack_to_codes, read_hqq
from .mlx import MLX_FILE, read_te_mlx
from .packed import FORMULA, LAYOUTS, TE_GROUP_SIZE, Packed4Bit, TEWeights, check_te_values, dequantize_4bit, pack_nibbles, unpack_nibbles

__all__ = [
    "HQQ_FILE",
    "LAYER_NORMS",
    "LAYOUTS",
    "LINEARS",
    "MLX_FILE",
    "TE_FOLDER_NAMES",
    "TE_GROUP_SIZE",
    "Packed4Bit",
    "TEWeights",
    "check_inventory",
    "check_te_values",
    "codes_to_hqq_packed",
    "dequantize_4bit",
    "FORMULA",
    "expected_dense_shapes",
    "expected_linear_shapes",
    "find_tokenizer_dir",
    "head_dim",
    "hqq_unpack_to_codes",
    "pack_nibbles",
    "read_config",
    "read_dense_te",
    "read_hqq",
    "read_te",
    "read_te_mlx",
    "resolve_te_folder",
    "rope_theta",
    "te_layout",
    "unpack_nibbles",
]
