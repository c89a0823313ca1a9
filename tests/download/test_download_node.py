"""The download node inside a real ComfyUI: progress through ComfyUI's bar, files where the loaders
look, the downloaded text encoder loading through BonsaiTextEncoderLoader, and the offline message."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer

pytestmark = pytest.mark.comfyui

REPO = "prism-ml/bonsai-image-ternary-4B-gemlite-2bit"
SNAP = "bonsai-image-ternary-4B-gemlite-2bit"


@pytest.fixture()
def hub_with_te(comfyui, tmp_path: Path) -> Iterator[HubServer]:  # noqa: ANN001
    """A gemlite repo whose text_encoder-hqq-4bit/ is a real tiny HQQ TE (with its tokenizer)."""
    fixture = comfyui.pack("bonsai_tools.synth")
    te = fixture.make_te_fixture(
        "hqq", "tiny", 21, tmp_path / "te", tokenizer_src=comfyui.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    )
    files = {f"text_encoder-hqq-4bit/{p.relative_to(te).as_posix()}": p.read_bytes() for p in te.rglob("*") if p.is_file()}
    files["model_index.json"] = b'{"_class_name": "Flux2KleinPipeline"}'
    files["vae/config.json"] = b'{"latent_channels": 32}'
    server = HubServer({REPO: FakeRepo(REPO, files)}).start()
    yield server
    server.stop()


def _graph(**inputs: object) -> dict:
    args = {"variant": "ternary", "backend": "gemlite", "text_encoder": True, "vae": True, "to_canonical": False, **inputs}
    return {
        "1": {"class_type": "BonsaiDownloadModel", "inputs": args},
        "2": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["1", 0], "label": "dir"}},
    }


def test_download_node_then_load_the_text_encoder(
    comfyui, module_models: Path, hub_with_te: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    # The node downloads into the first "bonsai" folder: this module's own root, so the (partial) release
    # snapshot it writes is not seen by later modules.
    monkeypatch.setenv("HF_ENDPOINT", hub_with_te.endpoint)
    result = comfyui.run(_graph())
    assert result.success, result.error
    snap = module_models / "bonsai" / SNAP
    assert Path(result.captured["dir"]) == snap
    assert (snap / "text_encoder-hqq-4bit" / "qmodel.pt").is_file() and (snap / "vae" / "config.json").is_file()
    bars = [(v, t) for v, t, node in comfyui.progress if node == "1"]
    assert bars and bars[-1][0] == bars[-1][1] and all(v <= t for v, t in bars)
    load = {
        "1": {"class_type": "BonsaiTextEncoderLoader", "inputs": {"text_encoder": f"bonsai/{SNAP}/text_encoder-hqq-4bit"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a red fox"}},
        "3": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["2", 0], "label": "cond"}},
    }
    loaded = comfyui.run(load)
    assert loaded.success, loaded.error
    assert loaded.captured["cond"][0][0].shape == (1, 512, 384)


def test_download_node_offline(comfyui, module_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = comfyui.run(_graph(variant="binary"))
    assert not result.success
    msg = result.error["exception_message"]
    assert "Cannot reach the Hugging Face Hub" in msg and "bonsai-image-binary-4B-gemlite-1bit" in msg
