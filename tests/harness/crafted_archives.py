"""``torch.save``-format archives with any tensor fields: sizes, strides, offsets and storage
records that torch itself would never write (a stride of 0, a storage smaller than the view, a
record claiming more bytes than its zip entry, two tensors on the same bytes).

The archive is what ``torch.save`` writes (``<name>/data.pkl``, ``<name>/data/<key>`` stored
entries, ``version``, ``byteorder``); the pickle is made by the standard pickler with a persistent
id per storage, exactly as torch's own."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch._utils

STORAGE_NAMES = {
    torch.float64: "DoubleStorage", torch.float32: "FloatStorage", torch.float16: "HalfStorage", torch.bfloat16: "BFloat16Storage",
    torch.int64: "LongStorage", torch.int32: "IntStorage", torch.int16: "ShortStorage", torch.int8: "CharStorage",
    torch.uint8: "ByteStorage", torch.bool: "BoolStorage",
}  # fmt: skip


@dataclass
class Storage:
    """One storage: its bytes (the zip entry) and what its record claims (element count, dtype)."""

    key: str
    data: bytes
    dtype: torch.dtype
    numel: int | None = None  # claimed element count; None: what ``data`` holds


@dataclass
class View:
    """A tensor as the pickle declares it: a view over one :class:`Storage`."""

    storage: Storage
    offset: Any
    shape: Any
    stride: Any


class _Rebuild:
    def __init__(self, view: View) -> None:
        self.view = view

    def __reduce__(self) -> tuple[Any, ...]:
        v = self.view
        return (torch._utils._rebuild_tensor_v2, (v.storage, v.offset, v.shape, v.stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> Any:
        if isinstance(obj, Storage):
            itemsize = torch.empty((), dtype=obj.dtype).element_size()
            numel = len(obj.data) // itemsize if obj.numel is None else obj.numel
            return ("storage", getattr(torch, STORAGE_NAMES[obj.dtype]), obj.key, "cpu", numel)
        return None


def view_of(t: torch.Tensor, key: str) -> View:
    """A real tensor as a contiguous view over its own new storage."""
    t = t.detach().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return View(Storage(key, data, t.dtype), 0, tuple(t.shape), tuple(t.stride()))


def write_archive(path: Path, tree: Any, name: str = "archive") -> Path:
    """Write ``tree`` (dicts of :class:`View` or tensors, as a state dict) as a torch.save archive."""
    storages: dict[str, Storage] = {}
    counter = iter(range(1 << 30))

    def convert(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: convert(c) for k, c in v.items()}
        if isinstance(v, torch.Tensor):
            v = view_of(v, str(next(counter) + 100000))
        if isinstance(v, View):
            storages.setdefault(v.storage.key, v.storage)
            return _Rebuild(v)
        return v

    obj = convert(tree)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", buf.getvalue())
        z.writestr(f"{name}/byteorder", "little")
        for key, s in storages.items():
            z.writestr(f"{name}/data/{key}", s.data)
        z.writestr(f"{name}/version", "3\n")
    return path


def stride0_gemlite_pack(folder: Path, bits: int = 2, *, only: str | None = None) -> Path:
    """A gemlite pack folder of the full Klein 4B geometry in which every weight (or only the
    ``W_q`` of module ``only``, the rest being real zeros) is one stored element repeated by
    strides of 0: a file of a few KB that describes the whole 4B model."""
    from bonsai_core.formats.gemlite import PACK_DTYPES, W_GROUP_MODE_FMA
    from bonsai_core.formats.layout import quantization_config, write_json
    from bonsai_core.klein import GROUP_SIZE, KLEIN_4B, KLEIN_TINY, diffusers_dense_tensors, diffusers_quantized_linears

    cfg = KLEIN_TINY if only is not None else KLEIN_4B
    folder.mkdir(parents=True)
    one_byte = Storage("one_byte", b"\x01", torch.uint8)
    one_float = Storage("one_float", torch.tensor([0.5]).numpy().tobytes(), torch.float32)
    minus_one_float = Storage("minus_one_float", torch.tensor([-0.5]).numpy().tobytes(), torch.float32)  # ternary: zeros = -scales
    one_bf16 = Storage("one_bf16", torch.tensor([0.5], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes(), torch.bfloat16)

    def repeated(storage: Storage, shape: tuple[int, ...]) -> View:
        return View(storage, 0, tuple(shape), (0,) * len(shape))

    sd: dict[str, Any] = {}
    for key, shape in diffusers_dense_tensors(cfg).items():
        sd[key] = torch.zeros(shape, dtype=torch.bfloat16) if only is not None else repeated(one_bf16, shape)
    for mod, (n, k) in diffusers_quantized_linears(cfg).items():
        wq_shape, s_shape = (k * bits // 8, n), (k // GROUP_SIZE, n)
        if only is None or mod == only:
            sd[f"{mod}.W_q"] = repeated(one_byte, wq_shape)
        else:
            sd[f"{mod}.W_q"] = torch.zeros(wq_shape, dtype=PACK_DTYPES[8])
        sd[f"{mod}.scales"] = repeated(one_float, s_shape) if only is None else torch.ones(s_shape)
        sd[f"{mod}.zeros"] = repeated(minus_one_float, s_shape) if only is None else -torch.ones(s_shape)
        sd[f"{mod}.metadata"] = torch.tensor([0, bits, GROUP_SIZE, (1 << bits) - 1, 8 // bits, 1, 1, 0, 0, 0, W_GROUP_MODE_FMA, 1], dtype=torch.int32)
        sd[f"{mod}.orig_shape"] = torch.tensor([n, k], dtype=torch.int32)
    write_archive(folder / "state_dict.pt", sd, "state_dict")
    write_json(folder / "config.json", cfg.to_diffusers_config())
    fmt = "gemlite-int2-ternary-g128" if bits == 2 else "gemlite-int1-g128"
    write_json(folder / "quantization_config.json", quantization_config(fmt, bits, cfg, packing_bitwidth=8))
    return folder
