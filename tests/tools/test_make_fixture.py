"""``python -m bonsai_tools make-fixture``: deterministic transformers, and with ``--snapshot`` whole
release-shaped snapshots (transformer + text encoder + VAE) that the runtime's readers accept."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bonsai_core.formats import open_checkpoint
from bonsai_core.safetensors_io import SafetensorsReader
from bonsai_core.te_formats import read_te
from bonsai_core.vae import VAE_CLASS_NAME, VAE_CONFIG_NAME, VAE_FOLDER, VAE_LATENT_CHANNELS, VAE_WEIGHTS_NAME, vae_tensor_shapes
from bonsai_tools.cli import main as tools_main
from bonsai_tools.synth import SNAPSHOT_LAYOUTS, TE_CONFIGS

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("binary", "ternary")


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def tokenizer(tmp_path: Path) -> Path:
    """A tokenizer folder shaped like ComfyUI's bundled Qwen tokenizer (template inside the config)."""
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.json").write_text('{"a": 0}')
    (d / "merges.txt").write_text("#version: 0.2\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}", "model_max_length": 131072}))
    return d


def test_make_fixture_cli_twice_same_sha256(tmp_path: Path) -> None:
    for i in (1, 2):
        r = _run(
            "bonsai_tools",
            "make-fixture",
            "--variant",
            "binary",
            "--size",
            "tiny",
            "--format",
            "canonical",
            "--seed",
            "5",
            str(tmp_path / f"{i}.safetensors"),
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(tmp_path / f"{i}.safetensors")
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


@pytest.mark.parametrize("layout", SNAPSHOT_LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_snapshot_is_a_whole_release_the_readers_accept(
    tmp_path: Path, tokenizer: Path, capsys: pytest.CaptureFixture[str], variant: str, layout: str
) -> None:
    out = tmp_path / "snap"
    argv = ["make-fixture", "--snapshot", "--variant", variant, "--format", layout, "--seed", "3", "--tokenizer", str(tokenizer), str(out)]
    assert tools_main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)

    # transformer: detected from the snapshot root, as a download is
    info = open_checkpoint(out).summary()
    assert (info["variant"], info["source_format"]) == (variant, layout)

    # text encoder: 4-bit in the packed releases, sharded bf16 Qwen3 in the unpacked one
    if layout == "unpacked":
        cfg = json.loads((out / "text_encoder" / "config.json").read_text())
        assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["hidden_size"] == TE_CONFIGS["tiny"]["hidden_size"]
        index = json.loads((out / "text_encoder" / "model.safetensors.index.json").read_text())
        assert all((out / "text_encoder" / shard).is_file() for shard in set(index["weight_map"].values()))
    else:
        te = read_te(out)
        assert te.layout == ("hqq" if layout == "gemlite" else "mlx") and te.config["hidden_size"] == TE_CONFIGS["tiny"]["hidden_size"]
    tok_dirs = [p.parent for p in out.rglob("chat_template.jinja")]
    assert tok_dirs, "the tokenizer given with --tokenizer is shipped"
    for d in tok_dirs:  # as Qwen3 releases ship it: the template in its own file, not in the config
        assert (d / "vocab.json").is_file() and "chat_template" not in json.loads((d / "tokenizer_config.json").read_text())

    # VAE: the released file names, config and full key set
    vae = out / VAE_FOLDER
    cfg = json.loads((vae / VAE_CONFIG_NAME).read_text())
    assert cfg["_class_name"] == VAE_CLASS_NAME and cfg["latent_channels"] == VAE_LATENT_CHANNELS
    assert set(SafetensorsReader(vae / VAE_WEIGHTS_NAME).keys()) == set(vae_tensor_shapes())

    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_snapshot_same_seed_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            tools_main(["make-fixture", "--snapshot", "--variant", "binary", "--format", "mlx", "--seed", "7", str(tmp_path / name)]) == 0
        )
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


@pytest.mark.parametrize("fmt", ["canonical", "gguf"])
def test_snapshot_of_a_single_file_layout_is_refused(tmp_path: Path, fmt: str) -> None:
    r = _run("bonsai_tools", "make-fixture", "--snapshot", "--variant", "binary", "--format", fmt, str(tmp_path / "snap"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "gemlite, mlx, unpacked" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_snapshot_into_an_existing_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert tools_main(["make-fixture", "--snapshot", "--variant", "ternary", str(tmp_path)]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["make-fixture", "bench-linear", "bench-model", "bench-lora"])
def test_runtime_cli_names_the_tooling_command(tmp_path: Path, command: str) -> None:
    """The runtime CLI no longer has the developer commands: one line saying where they went, exit 2,
    and the tooling package is not imported to say it."""
    probe = (
        "import sys\n"
        "from bonsai_core.cli import main\n"
        f"rc = main([{command!r}, '--variant', 'binary', {str(tmp_path / 'x')!r}])\n"
        "sys.stdout.write(f'{rc} {\"bonsai_tools\" in sys.modules}')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.stdout == "2 False", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"'{command}' is a developer command"), lines
    assert f"run `python <pack folder>/bonsai_tools {command}` from any folder" in lines[0], lines
    assert not (tmp_path / "x").exists()
