"""MLX text encoders (``text_encoder-mlx-4bit/``, the Apple releases), read without dequantizing.

``model.safetensors`` (or shards behind ``model.safetensors.index.json``) with mlx-lm names
(``model.`` prefix): ``<linear>.weight`` uint32 ``[N, K/8]`` LSB-first, ``.scales`` and
``.biases`` ``[N, K/64]``, and ``W = scales * q + biases``; ``embed_tokens`` is quantized too.

Every shard is opened once; the whole inventory is checked against ``config.json`` from the
headers before any weight is read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..bounded import read_shard_index
from ..errors import BonsaiFormatError
from ..packing import check_dense_values
from ..safetensors_io import SafetensorsReader
from .config import check_inventory, expected_linear_shapes, read_config
from .packed import Packed4Bit, TEWeights, check_te_values

MLX_FILE = "model.safetensors"
MAX_SHARDS = 64


def _mlx_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files, and the index's key -> shard name (None for a single file)."""
    index = folder / (MLX_FILE + ".index.json")
    single = folder / MLX_FILE
    if single.is_file():
        return [single], None
    if index.is_file():
        placed = read_shard_index(index, MAX_SHARDS)
        shards = sorted(set(placed.values()))
        return [folder / f for f in shards], placed
    raise BonsaiFormatError(single, None, "file not found")


def _hf_name(key: str) -> str:
    return key if key.startswith("model.") or key.startswith("lm_head") else "model." + key


def _packed_shape(reader: SafetensorsReader, base: str, k: int | None, file: Path) -> tuple[tuple[int, int], int]:
    """(logical [N, K], group size) of one mlx-lm quantized tensor, from its header entries; the
    group size is read off the shapes (mlx-lm allows per-layer overrides)."""
    wname = base + ".weight"
    if reader.dtype_name(wname) != "U32" or len(reader.shape(wname)) != 2:
        raise BonsaiFormatError(
            file, wname, f"quantized weight is {reader.dtype_name(wname)} {list(reader.shape(wname))}, expected 2-D U32"
        )
    for leaf in (".scales", ".biases"):
        if len(reader.shape(base + leaf)) != 2 or reader.dtype_name(base + leaf) not in ("F16", "BF16", "F32"):
            raise BonsaiFormatError(
                file, base + leaf, f"expected a 2-D float tensor, found {reader.dtype_name(base + leaf)} {list(reader.shape(base + leaf))}"
            )
    (n, words), (sn, g) = reader.shape(wname), reader.shape(base + ".scales")
    if k is not None and words * 8 != k:
        bits = words * 32 // k if k else "?"
        raise BonsaiFormatError(file, wname, f"uint32 [{n}, {words}] holds {bits}-bit codes for in_features {k}; only 4-bit is supported")
    gs = words * 8 // g if g else 0
    if sn != n or gs not in (32, 64, 128) or words * 8 != g * gs or reader.shape(base + ".biases") != (sn, g):
        raise BonsaiFormatError(file, wname, f"uint32 [{n}, {words}] with scales {[sn, g]} is not 4-bit with group size 32, 64 or 128")
    return (n, words * 8), gs


def read_te_mlx(folder: str | os.PathLike[str]) -> TEWeights:
    """Read ``text_encoder-mlx-4bit/`` (mlx-lm 4-bit safetensors) without dequantizing."""
    if sys.byteorder != "little":
        raise BonsaiFormatError(folder, None, "MLX uint32 words are read as little-endian bytes; big-endian hosts are not supported")
    folder = Path(folder)
    config = read_config(folder)
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits", 4) if isinstance(quant, dict) else None
    if bits != 4:
        raise BonsaiFormatError(folder / "config.json", "quantization", f"bits={bits!r}; only 4-bit text encoders are supported")
    # in_features per quantized tensor from config.json: tells 4-bit words apart from other widths
    in_features = {k: shape[1] for k, shape in expected_linear_shapes(config).items()}
    in_features["model.embed_tokens.weight"] = config["hidden_size"]

    # 1) headers only: what each file holds, checked against the config before any read
    plan: list[tuple[SafetensorsReader, str, str, int | None]] = []  # reader, key, HF name, group size (packed)
    packed_shapes: dict[str, tuple[int, ...]] = {}
    dense_shapes: dict[str, tuple[int, ...]] = {}
    lm_head = "absent"
    files, placed = _mlx_files(folder)
    where: dict[str, Path] = {}  # HF name -> the shard holding it: a tensor is in exactly one place
    for file in files:
        reader = SafetensorsReader(file)
        keys = set(reader.keys())
        for key in sorted(keys):
            name = _hf_name(key)
            if name in where:
                raise BonsaiFormatError(file, key, f"is also in {where[name].name} (as {name}): a tensor present in two places")
            where[name] = file
            if placed is not None and placed.get(key) != file.name:
                said = f"places it in {placed[key]}" if key in placed else "does not list it"
                raise BonsaiFormatError(file, key, f"is in this shard but {MLX_FILE}.index.json {said}")
            if name.startswith("lm_head"):
                lm_head = "tied"
                continue
            if key.endswith((".scales", ".biases")):
                if key.rsplit(".", 1)[0] + ".weight" not in keys:
                    raise BonsaiFormatError(file, key, "quantization parameters without their weight")
                continue
            base = key[: -len(".weight")] if key.endswith(".weight") else None
            if base is not None and base + ".scales" in keys:
                if base + ".biases" not in keys:
                    raise BonsaiFormatError(file, base + ".biases", "tensor is missing (MLX affine quantization stores scales and biases)")
                packed_shapes[name], gs = _packed_shape(reader, base, in_features.get(name), file)
                plan.append((reader, key, name, gs))
            else:
                dense_shapes[name] = reader.shape(key)
                plan.append((reader, key, name, None))
    check_inventory(config, folder / MLX_FILE, packed_shapes, dense_shapes)

    # 2) the data, one tensor at a time, values checked as read
    te = TEWeights(config=config, packed={}, dense={}, layout="mlx", path=folder, lm_head=lm_head)
    for reader, key, name, gs in plan:
        if gs is None:
            te.dense[name] = check_dense_values(reader.get(key), reader.path, key)
            continue
        base = key[: -len(".weight")]
        codes = reader.get(key).view(torch.uint8)  # little-endian words: LSB-first nibbles = our byte order
        p = Packed4Bit(codes, reader.get(base + ".scales"), reader.get(base + ".biases"), "mlx", gs)
        te.packed[name] = check_te_values(p, reader.path, key)
    return te
