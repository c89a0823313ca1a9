"""Property-based fuzzing of what the readers parse from untrusted files (run by
test_fuzz_formats.py inside a heap-capped interpreter; see bounded_worker.py).

Each property writes a generated file and asserts the only outcomes are success (with the
reader's invariants holding) or one BonsaiFormatError naming that file. Every example has a time
limit (hypothesis ``deadline``). ``BONSAI_FUZZ_EXAMPLES`` raises the number of examples.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonsai_core.errors import BonsaiFormatError
from bonsai_core.formats.layout import check_quantized_fqns, load_transformer_config, quant_json_bits, read_json
from bonsai_core.klein import KLEIN_TINY, diffusers_dense_tensors, diffusers_quantized_linears
from bonsai_core.safetensors_io import _ST_ITEMSIZE, SafetensorsReader, read_header
from bonsai_core.te_formats import read_config

EXAMPLES = int(os.environ.get("BONSAI_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per example: a reader that stalls on a crafted input fails the run
    derandomize=os.environ.get("BONSAI_FUZZ_RANDOM") is None,  # CI: reproducible; set the variable to explore
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=20
)
dims = st.one_of(st.integers(min_value=0, max_value=16), st.integers(min_value=-5, max_value=1 << 62), json_scalars)
entries = st.one_of(
    st.fixed_dictionaries(
        {
            "dtype": st.one_of(st.sampled_from(sorted(_ST_ITEMSIZE)), json_scalars),
            "shape": st.one_of(st.lists(dims, max_size=10), json_values),
            "data_offsets": st.one_of(
                st.lists(st.integers(min_value=-4, max_value=300), min_size=2, max_size=2), st.lists(dims, max_size=3), json_values
            ),
        }
    ),
    json_values,
)
headers = st.dictionaries(
    st.one_of(st.text(max_size=10), st.just("__metadata__")),
    st.one_of(entries, st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
    max_size=8,
)


def _write(path: Path, raw_header: bytes, data: bytes, length_lie: int | None) -> None:
    n = len(raw_header) if length_lie is None else length_lie
    path.write_bytes(struct.pack("<Q", n) + raw_header + data)


def _read_everything(path: Path, mmap: bool) -> None:
    """Read the file as the loaders do; on success check the reader's promises."""
    try:
        entries_, _ = read_header(path)
        reader = SafetensorsReader(path, mmap=mmap)
        for name, e in entries_.items():
            if e["dtype"] not in ("U64", "U16"):  # dtypes without a torch type here are listed, not read
                t = reader.get(name)
                assert t.numel() * t.element_size() == e["data_offsets"][1] - e["data_offsets"][0]
                assert list(t.shape) == e["shape"]
        reader.close()
    except BonsaiFormatError as err:
        assert err.path == str(path), err
        assert "\n" not in str(err)


def fuzz_safetensors_headers(folder: str) -> None:
    path = Path(folder) / "fuzz.safetensors"

    @SETTINGS
    @given(
        header=headers,
        data=st.binary(max_size=300),
        lie=st.one_of(st.none(), st.integers(min_value=0, max_value=(1 << 64) - 1)),
        mmap=st.booleans(),
    )
    def prop(header: dict[str, Any], data: bytes, lie: int | None, mmap: bool) -> None:
        _write(path, json.dumps(header).encode(), data, lie)
        _read_everything(path, mmap)

    prop()


def fuzz_safetensors_bytes(folder: str) -> None:
    """Mutated bytes of a valid header (flips, cuts, insertions) and plain random bytes."""
    path = Path(folder) / "bytes.safetensors"
    valid = json.dumps({"__metadata__": {"a": "b"}, "w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()

    @SETTINGS
    @given(
        edits=st.lists(st.tuples(st.integers(min_value=0, max_value=len(valid) - 1), st.binary(max_size=3)), max_size=6),
        cut=st.integers(min_value=0, max_value=len(valid)),
        noise=st.binary(max_size=64),
        raw=st.booleans(),
    )
    def prop(edits: list[tuple[int, bytes]], cut: int, noise: bytes, raw: bool) -> None:
        if raw:
            path.write_bytes(noise)
        else:
            b = bytearray(valid)
            for at, ins in edits:
                b[at : at + len(ins)] = ins
            _write(path, bytes(b[: max(cut, 1)]), b"\0" * 8, None)
        _read_everything(path, True)

    prop()


def fuzz_json_configs(folder: str) -> None:
    """Transformer and text-encoder config.json files: generated objects and raw text."""
    base = Path(folder)
    tf_cfg = KLEIN_TINY.to_diffusers_config()
    logical = {f"{m}.weight": s for m, s in diffusers_quantized_linears(KLEIN_TINY).items()} | diffusers_dense_tensors(KLEIN_TINY)
    te_cfg = {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 256,
    }
    q_cfg = {"bits": 2, "group_size": 128, "packing_bitwidth": 8, "quantized_fqns": sorted(diffusers_quantized_linears(KLEIN_TINY))}
    special = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 40, "[" * 5000, "{}", "[]", '"x"', "null", "\ufeff{}"])

    bases = {"transformer": tf_cfg, "te": te_cfg, "quantization": q_cfg}

    # configs are cheap to check and have many independent keys: more examples than the headers
    @settings(SETTINGS, max_examples=4 * EXAMPLES)
    @given(
        which=st.sampled_from(sorted(bases)),
        data=st.data(),
        raw_value=st.one_of(st.none(), special),
        nest=st.booleans(),
    )
    def prop(which: str, data: st.DataObject, raw_value: str | None, nest: bool) -> None:
        # change a few of the keys this kind of file really has (plus text_config) to anything JSON can hold
        keys = st.sampled_from(sorted(set(bases[which]) | {"text_config"}))
        changes = data.draw(st.dictionaries(keys, st.one_of(json_values, dims, st.lists(json_values, max_size=3)), max_size=4))
        cfg = {**bases[which], **changes}
        text = json.dumps({"text_config": cfg} if nest and which == "te" else cfg)  # only a TE config may nest
        if raw_value is not None and changes:
            key = next(iter(changes))
            text = text.replace(json.dumps(key) + ": " + json.dumps(changes[key]), json.dumps(key) + ": " + raw_value, 1)
        path = base / "config.json"
        path.write_text(text)
        try:
            if which == "transformer":
                load_transformer_config(path, logical)
            elif which == "te":
                read_config(base)
            else:
                qcfg = read_json(path)
                assert qcfg is not None
                quant_json_bits(path, qcfg)
                check_quantized_fqns(path, qcfg, KLEIN_TINY)
        except BonsaiFormatError as err:
            assert err.path == str(path), err
            assert "\n" not in str(err)

    prop()


def fuzz_gguf_bytes(folder: str) -> None:
    """Byte edits in the header, key/value and tensor-info region of a valid tiny binary GGUF (and a cut
    file): the only outcomes are a checkpoint whose first packed and dense tensors load, or one
    BonsaiFormatError naming the file. The ``gguf`` package parses the header; this checks that
    whatever it raises on a crafted file is turned into that one error, within the memory cap."""
    from bonsai_core.formats import open_checkpoint
    from bonsai_tools.synth import make_fixture

    base = Path(folder)
    valid = make_fixture("binary", "tiny", "gguf", 0, base / "valid.gguf").read_bytes()
    head = min(len(valid), 16384)  # magic, counts, key/values and tensor infos of a tiny model
    path = base / "fuzz.gguf"

    @SETTINGS
    @given(
        edits=st.lists(
            st.tuples(st.integers(min_value=0, max_value=head - 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6
        ),
        cut=st.one_of(st.none(), st.integers(min_value=0, max_value=len(valid))),
    )
    def prop(edits: list[tuple[int, bytes]], cut: int | None) -> None:
        b = bytearray(valid)
        for at, ins in edits:
            b[at : at + len(ins)] = ins
        path.write_bytes(bytes(b if cut is None else b[:cut]))
        try:
            ckpt = open_checkpoint(path)
            ckpt.load_packed(next(iter(ckpt.packed_shapes)))
            ckpt.load_dense(next(iter(ckpt.dense_shapes)))
        except BonsaiFormatError as err:
            assert err.path == str(path), err
            assert "\n" not in str(err)

    prop()


# --- torch.save archives: tensor shape, stride, offset and storage fields (issue 18, item 5) ---

PT_DTYPES = ("uint8", "float16", "float32", "int32")
fields = st.one_of(st.integers(min_value=0, max_value=12), st.integers(min_value=-3, max_value=1 << 62), st.just(1 << 63))
small = st.integers(min_value=0, max_value=12)


@st.composite
def tensor_fields(draw: st.DrawFn) -> dict[str, Any]:
    """One declaration: mostly plausible (sizes and strides of one length, strides 0, 1, contiguous
    or transposed), sometimes anything at all."""
    ndim = draw(st.integers(min_value=0, max_value=4))
    shape = draw(st.lists(st.one_of(small, small, fields), min_size=ndim, max_size=ndim))
    contiguous, acc = [], 1
    for d in reversed(shape):
        contiguous.insert(0, acc)
        acc *= d if type(d) is int and 0 < d < 1 << 62 else 1
    stride = draw(
        st.one_of(
            st.just(contiguous),
            st.just(contiguous[::-1]),
            st.lists(st.sampled_from([0, 1, 2, 3]), min_size=ndim, max_size=ndim),
            st.lists(st.one_of(small, fields), min_size=ndim, max_size=ndim),
            st.lists(fields, max_size=4),
        )
    )
    return {
        "dtype": draw(st.sampled_from(PT_DTYPES)),
        "key": draw(st.sampled_from(["0", "1"])),  # two declarations may share one storage
        "elements": draw(st.integers(min_value=0, max_value=64)),  # what the zip entry holds
        "claimed": draw(st.one_of(st.none(), st.none(), fields)),  # what the storage record says it holds
        "offset": draw(st.one_of(st.just(0), small, fields)),
        "shape": shape,
        "stride": stride,
    }


def _declared(spec: dict[str, Any], storages: dict[str, Any]) -> Any:
    import torch
    from harness.crafted_archives import Storage, View

    dtype = getattr(torch, spec["dtype"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    storage = storages.setdefault(spec["key"], Storage(spec["key"], b"\x3c" * spec["elements"] * itemsize, dtype))
    if spec["claimed"] is not None:
        storage.numel = spec["claimed"]
    return View(storage, spec["offset"], tuple(spec["shape"]), tuple(spec["stride"]))


def _use(obj: Any, limit: int, entries: dict[str, int]) -> None:
    """Materialize every tensor as a reader would: none may come out larger than the file, and none
    may see more storage than its own zip entry holds (``entries``: name -> bytes of its entry)."""
    import torch

    from bonsai_core.tensor_bounds import walk_tensors

    for name, t in walk_tensors(obj):
        assert t.untyped_storage().nbytes() <= entries[name], f"{name} sees {t.untyped_storage().nbytes()} bytes, its entry holds {entries[name]}"
        c = t.contiguous().clone()
        assert c.numel() * c.element_size() <= limit, f"{name}: {c.numel() * c.element_size()} bytes materialized from a {limit}-byte file"
        if c.is_floating_point():
            torch.isfinite(c).all()


def fuzz_pt_tensor_fields(folder: str) -> None:
    """Generated sizes, strides, offsets and storage records (a stride of 0, a view past its storage,
    a record claiming more than its zip entry, shared bytes, huge and negative numbers): the only
    outcomes are tensors whose materialized bytes the file holds, or one BonsaiFormatError."""
    from harness.crafted_archives import write_archive

    from bonsai_core.torch_archive import load_archive

    path = Path(folder) / "fuzz.pt"

    @SETTINGS
    @given(specs=st.lists(tensor_fields(), min_size=1, max_size=3), mmap=st.booleans())
    def prop(specs: list[dict[str, Any]], mmap: bool) -> None:
        storages: dict[str, Any] = {}
        views = {f"t{i}": _declared(s, storages) for i, s in enumerate(specs)}
        write_archive(path, views)
        try:
            _use(load_archive(path, mmap=mmap), path.stat().st_size, {k: len(v.storage.data) for k, v in views.items()})
        except BonsaiFormatError as err:
            assert err.path == str(path), err
            assert "\n" not in str(err)

    prop()


def fuzz_gemlite_w_q_fields(folder: str) -> None:
    """One layer's ``W_q`` of a valid tiny gemlite pack given generated view fields over a storage of
    generated size: the pack opens and every layer loads, or one BonsaiFormatError names the file."""
    import torch
    from harness.crafted_archives import Storage, View, write_archive

    from bonsai_core.formats import open_checkpoint
    from bonsai_core.formats.gemlite import load_state_dict
    from bonsai_tools.synth import make_fixture

    base = Path(folder)
    pack = make_fixture("ternary", "tiny", "gemlite", 0, base / "snap")
    sd_path = pack / "state_dict.pt"
    clean = {k: v.clone() for k, v in load_state_dict(sd_path).items()}
    mod = "transformer_blocks.0.attn.to_q"
    k_bytes, n = clean[f"{mod}.W_q"].shape

    @SETTINGS
    @given(
        elements=st.integers(min_value=0, max_value=2 * k_bytes * n),
        offset=st.one_of(st.just(0), fields),
        shape=st.one_of(st.just([k_bytes, n]), st.lists(fields, min_size=2, max_size=2)),
        stride=st.one_of(st.just([n, 1]), st.just([1, k_bytes]), st.just([0, 0]), st.lists(fields, min_size=2, max_size=2)),
        claimed=st.one_of(st.none(), fields),
    )
    def prop(elements: int, offset: int, shape: list[int], stride: list[int], claimed: int | None) -> None:
        storage = Storage("w_q", bytes(elements), torch.uint8, claimed)
        write_archive(sd_path, {**clean, f"{mod}.W_q": View(storage, offset, tuple(shape), tuple(stride))}, "state_dict")
        try:
            ckpt = open_checkpoint(pack)
            for key in ckpt.packed_shapes:
                ckpt.load_packed(key)
        except BonsaiFormatError as err:
            assert err.path.startswith(str(pack)), err
            assert "\n" not in str(err)

    prop()
