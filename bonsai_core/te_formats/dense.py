"""The unpacked releases' dense bf16 ``text_encoder/`` (HF ``Qwen3ForCausalLM`` as
``save_pretrained`` writes it: ``config.json``, ``model.safetensors`` or shards behind
``model.safetensors.index.json``), read as strictly as the packed layouts.

* Every shard is opened once (:class:`bonsai_core.safetensors_io.SafetensorsReader`) and its
  header validated; the index is bounded JSON whose shard names are plain file names.
* The key set is exact: every tensor ``config.json`` implies, with its shape and a float dtype,
  and nothing else (``lm_head.weight``, tied to the embedding in Qwen3-4B and never used to encode,
  is the one name allowed beside them). A key in two shards, or in a shard the index does not place
  it in, is refused naming both files -- never "the later one wins".
* Values are checked as each tensor is read: one NaN or infinity is refused naming the file and
  the tensor, instead of an all-black image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..bounded import read_shard_index
from ..errors import BonsaiFormatError
from ..packing import check_dense_values
from ..safetensors_io import SafetensorsReader
from ..tensor_bounds import check_tensor
from .config import expected_dense_shapes, expected_linear_shapes, read_config

DENSE_FILE = "model.safetensors"
INDEX = DENSE_FILE + ".index.json"
MAX_SHARDS = 64  # Qwen3-4B in bf16 is 8 GB: 2-3 shards as released
UNUSED = ("lm_head.weight",)  # tied to the embedding; the text encoder uses hidden states only
FLOAT_ST = ("BF16", "F16", "F32")


def _index(folder: Path) -> dict[str, str] | None:
    """key -> shard file name from the index (None without one), every value a plain file name."""
    index = folder / INDEX
    if not index.is_file():
        return None
    return read_shard_index(index, MAX_SHARDS)


def _shard_files(folder: Path, index: dict[str, str] | None) -> list[Path]:
    if index is not None:
        return [folder / name for name in sorted(set(index.values()))]
    files = sorted(p for p in folder.glob("*.safetensors"))
    if not files:
        raise BonsaiFormatError(folder / DENSE_FILE, None, "file not found (no .safetensors weights in the text encoder folder)")
    if len(files) > MAX_SHARDS:
        raise BonsaiFormatError(folder, None, f"holds more than {MAX_SHARDS} .safetensors files")
    return files


def read_dense_te(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict under HF names) of a dense Qwen3 text encoder folder, fully checked
    (module docstring). Tensors view a private map of their shard (read when touched, once here
    for the value check)."""
    folder = Path(folder)
    config = read_config(folder)
    index = _index(folder)
    expected = {**expected_dense_shapes(config), **expected_linear_shapes(config)}
    readers: dict[str, SafetensorsReader] = {}  # key -> the reader of the one shard holding it
    for file in _shard_files(folder, index):
        if not file.is_file():
            raise BonsaiFormatError(file, None, "shard listed in the index is missing (incomplete download?)")
        reader = SafetensorsReader(file, mmap=True)
        for key in reader.keys():
            if key in readers:
                raise BonsaiFormatError(file, key, f"is also in {readers[key].path.name}: a tensor present in two shards")
            if index is not None and index.get(key) != file.name:
                placed = f"places it in {index[key]}" if key in index else "does not list it"
                raise BonsaiFormatError(file, key, f"is in this shard but {INDEX} {placed}")
            readers[key] = reader
    for key in index or {}:
        if key not in readers:
            raise BonsaiFormatError(folder / index[key], key, "listed in the shard index but not in the shard")  # type: ignore[index]
    unexpected = sorted(k for k in readers if k not in expected and k not in UNUSED)
    if unexpected:
        raise BonsaiFormatError(
            readers[unexpected[0]].path, unexpected[0], f"unexpected tensor for a {config['num_hidden_layers']}-layer Qwen3 ({len(unexpected)} unexpected)"
        )
    for key, shape in expected.items():
        r = readers.get(key)
        if r is None:
            raise BonsaiFormatError(folder, key, "tensor is missing from the text encoder")
        if r.shape(key) != shape:
            raise BonsaiFormatError(r.path, key, f"shape {list(r.shape(key))} does not match config.json ({list(shape)})")
        if r.dtype_name(key) not in FLOAT_ST:
            raise BonsaiFormatError(r.path, key, f"dtype {r.dtype_name(key)} is not a float weight")
    # the data, one tensor at a time, values checked as read
    state = {key: check_dense_values(check_tensor(readers[key].path, key, readers[key].get(key)), readers[key].path, key) for key in expected}
    return config, state
