"""CLI (subprocess and in-process), determinism of fixtures, atomic writes, dense export."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_helpers import FORMATS, SEED, VARIANTS, assert_same_weights, safetensors_body

from bonsai_core.cli import main
from bonsai_core.convert import write_checkpoint
from bonsai_core.formats import get_format, open_checkpoint
from bonsai_core.klein import KLEIN_TINY, bfl_dense_tensors, bfl_quantized_layers
from bonsai_core.safetensors_io import SafetensorsReader
from bonsai_tools.synth import make_fixture, synthetic_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bonsai_core", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_same_bytes(tmp_path: Path, fmt: str) -> None:
    variant = "binary" if fmt == "gguf" else "ternary"
    name = {"canonical": "a.safetensors", "gguf": "a.gguf"}.get(fmt, "a")
    a = make_fixture(variant, "tiny", fmt, 11, tmp_path / "1" / name)
    b = make_fixture(variant, "tiny", fmt, 11, tmp_path / "2" / name)
    c = make_fixture(variant, "tiny", fmt, 12, tmp_path / "3" / name)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)


def test_inspect_json_subprocess(tiny: dict) -> None:
    r = _run("inspect", str(tiny[("ternary", "gemlite")]), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["variant"] == "ternary" and info["source_format"] == "gemlite" and info["bits"] == 2
    assert info["group_size"] == 128
    assert info["quantized_tensors"] == len(bfl_quantized_layers(KLEIN_TINY))
    assert info["dense_tensors"] == len(bfl_dense_tensors(KLEIN_TINY))
    assert info["bytes_on_disk"] == (tiny[("ternary", "gemlite")] / "transformer-gemlite-int2" / "state_dict.pt").stat().st_size
    assert info["transformer_config"]["hidden_size"] == KLEIN_TINY.hidden_size


@pytest.mark.parametrize(("variant", "fmt"), [(v, f) for v in VARIANTS for f in FORMATS if get_format(f).holds(v)])
def test_inspect_text_in_process(tiny: dict, capsys: pytest.CaptureFixture[str], variant: str, fmt: str) -> None:
    assert main(["inspect", str(tiny[(variant, fmt)])]) == 0
    out = capsys.readouterr().out
    assert f"variant            {variant}" in out and f"source_format      {fmt}" in out


def test_bad_input_exits_2_with_one_error_line(tiny: dict) -> None:
    r = _run("inspect", str(tiny[("binary", "mlx")]), "--variant", "ternary")
    assert r.returncode == 2
    assert "expected a ternary checkpoint but this one is binary" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("to", FORMATS)
def test_convert_cli_every_target(tiny: dict, tmp_path: Path, to: str) -> None:
    variant = "binary"
    dst = tmp_path / {"canonical": "out.safetensors", "gguf": "out.gguf"}.get(to, "out")
    assert main(["convert", str(tiny[(variant, "unpacked")]), str(dst), "--to", to]) == 0
    assert_same_weights(open_checkpoint(dst), synthetic_checkpoint(variant, "tiny", SEED))


def test_convert_default_is_canonical_and_keeps_provenance(tiny: dict, tmp_path: Path) -> None:
    r = _run("convert", str(tiny[("ternary", "mlx")]), str(tmp_path / "c.safetensors"))
    assert r.returncode == 0, r.stderr
    md = SafetensorsReader(tmp_path / "c.safetensors").metadata
    assert md["bonsai_format"] == "bonsai-canonical" and md["variant"] == "ternary" and md["source_format"] == "mlx"
    h1, d1 = safetensors_body(tmp_path / "c.safetensors")
    h2, d2 = safetensors_body(tiny[("ternary", "canonical")])
    assert h1 == h2 and d1 == d2  # canonical bytes do not depend on the source layout


@pytest.mark.parametrize("variant", VARIANTS)
def test_dequantize_dense_bf16_bfl_keys(tiny: dict, tmp_path: Path, variant: str) -> None:
    out = tmp_path / "dense.safetensors"
    assert main(["dequantize", str(tiny[(variant, "gemlite")]), str(out)]) == 0
    r = SafetensorsReader(out)
    ref = synthetic_checkpoint(variant, "tiny", SEED)
    assert set(r.keys()) == set(ref.packed_shapes) | set(ref.dense_shapes)
    assert {r.dtype_name(k) for k in r.keys()} == {"BF16"}
    for k in ref.packed_shapes:
        assert torch.equal(r.get(k).float(), ref.load_packed(k).dequantize(torch.float32)), k
    for k in ref.dense_shapes:
        assert torch.equal(r.get(k), ref.load_dense(k)), k


# --- atomic writes -----------------------------------------------------------------------


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_nothing(tmp_path: Path, fmt: str) -> None:
    ckpt = synthetic_checkpoint("binary", "tiny", SEED)
    keys = list(ckpt.packed_shapes)
    load = ckpt.load_packed

    def failing(k: str):  # type: ignore[no-untyped-def]
        if k == keys[len(keys) // 2]:
            raise _Boom("interrupted mid-write")
        return load(k)

    ckpt.load_packed = failing  # type: ignore[method-assign]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / {"canonical": "m.safetensors", "gguf": "m.gguf"}.get(fmt, "snap")
    with pytest.raises(_Boom):
        write_checkpoint(ckpt, dst, fmt)
    leftovers = [p for p in out_dir.rglob("*") if p.is_file() or p.name.endswith(".partial")]
    assert leftovers == []
    assert not any(p.name.endswith(".partial") for p in out_dir.rglob("*"))
    assert not (dst.exists() and any(dst.rglob("*.safetensors")))


def test_interrupted_overwrite_keeps_the_old_file(tiny: dict, tmp_path: Path) -> None:
    dst = tmp_path / "c.safetensors"
    dst.write_bytes(tiny[("binary", "canonical")].read_bytes())
    before = dst.read_bytes()
    ckpt = synthetic_checkpoint("ternary", "tiny", SEED)
    ckpt.load_dense = lambda k: (_ for _ in ()).throw(_Boom("stop"))  # type: ignore[method-assign]
    with pytest.raises(_Boom):
        write_checkpoint(ckpt, dst, "canonical")
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.comfyui
def test_dequantized_file_loads_in_stock_comfyui(tiny: dict, tmp_path: Path) -> None:
    """``dequantize`` output is what stock ComfyUI's UNETLoader path loads as FLUX.2."""
    comfy_dir = Path(os.environ.get("COMFYUI_PATH", Path.home() / "comfy" / "ComfyUI"))
    if not (comfy_dir / "comfy" / "sd.py").is_file():
        pytest.skip(f"ComfyUI not found at {comfy_dir}")
    out = tmp_path / "dense.safetensors"
    assert main(["dequantize", str(tiny[("ternary", "canonical")]), str(out)]) == 0
    code = (
        "import sys, torch\n"
        "sys.argv = [sys.argv[0], '--cpu']\n"
        "import comfy.options; comfy.options.enable_args_parsing()\n"
        "import comfy.sd, comfy.utils\n"
        f"m = comfy.sd.load_diffusion_model({str(out)!r})\n"
        "print(type(m.model).__name__, type(m.model.diffusion_model).__module__)\n"
        f"sd = comfy.utils.load_torch_file({str(out)!r})\n"
        "msd = m.model.diffusion_model.state_dict()\n"
        # ComfyUI's RMSNorm names the BFL '.scale' parameter '.weight'
        "mk = lambda k: k if k in msd else k.rsplit('.', 1)[0] + '.weight'\n"
        "bad = [k for k in sd if not torch.equal(msd[mk(k)].float(), sd[k].float())]\n"
        "print('mismatch', len(bad), len(sd))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=comfy_dir, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "flux" in r.stdout.lower()
    assert f"mismatch 0 {len(bfl_quantized_layers(KLEIN_TINY)) + len(bfl_dense_tensors(KLEIN_TINY))}" in r.stdout


def test_interrupt_inside_torch_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gemlite builds its dict first; the write itself is torch.save into the temp folder."""
    import bonsai_core.formats.gemlite as gemlite

    def half_save(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(gemlite.torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        gemlite.write_gemlite(synthetic_checkpoint("binary", "tiny", SEED), tmp_path / "snap")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_keyboard_interrupt_mid_canonical_write(tmp_path: Path) -> None:
    ckpt = synthetic_checkpoint("ternary", "tiny", SEED)
    calls = {"n": 0}
    load = ckpt.load_packed

    def interrupted(k: str):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return load(k)

    ckpt.load_packed = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(ckpt, tmp_path / "c.safetensors", "canonical")
    assert list(tmp_path.iterdir()) == []


def test_dequantize_warns_when_scales_are_not_bf16(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bonsai_core.canonical import save_canonical
    from bonsai_core.convert import dequantize_checkpoint
    from bonsai_core.packing import PackedWeight

    ckpt = synthetic_checkpoint("binary", "tiny", SEED)
    key = next(iter(ckpt.packed_shapes))
    load = ckpt.load_packed

    def odd(k: str) -> PackedWeight:
        p = load(k)
        return PackedWeight(p.codes, p.scales.float() * (1 + 2**-12), p.bits) if k == key else p  # 13 significant bits: fp32 only

    ckpt.load_packed = odd  # type: ignore[method-assign]
    ckpt.extra = {}
    src = tmp_path / "c.safetensors"
    save_canonical(ckpt, src)
    assert SafetensorsReader(src).dtype_name(key + "_scale") == "F32"
    with caplog.at_level("WARNING"):
        out = dequantize_checkpoint(src, tmp_path / "d.safetensors")
    assert any(key in r.message and "not exact" in r.message for r in caplog.records)
    dense = SafetensorsReader(out).get(key)
    assert torch.equal(dense, odd(key).dequantize(torch.float32).to(torch.bfloat16))
