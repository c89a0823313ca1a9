"""The download node inside a real ComfyUI: progress through ComfyUI's bar, files where the loaders
look, the downloaded text encoder loading through BonsaiTextEncoderLoader, and the offline message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeRepo, HubServer
from release_trees import closed_port

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
    args = {"variant": "ternary", "release": "auto", "text_encoder": True, "vae": True, "to_canonical": False, **inputs}
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


def test_download_node_offline_is_one_readable_error(comfyui, module_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    result = comfyui.run(_graph(variant="binary"))
    assert not result.success
    err = result.error
    # ComfyUI shows "module.QualName"; the pack's folder path would otherwise be mangled into the module name
    assert err["exception_type"] == "bonsai_image.BonsaiDownloadError"
    msg = err["exception_message"]
    assert msg.startswith("Cannot reach the Hugging Face Hub") and "bonsai-image-binary-4B-gemlite-1bit" in msg
    target = module_models / "bonsai" / "bonsai-image-binary-4B-gemlite-1bit"
    assert "To install by hand: download https://huggingface.co/prism-ml/bonsai-image-binary-4B-gemlite-1bit/tree/main" in msg
    assert f"into {target}/" in msg and "transformer-gemlite-int1/" in msg
    assert not target.exists()


def test_offline_mode_fails_at_queue_time_with_the_manual_steps(comfyui, module_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """HF_HUB_OFFLINE=1: nothing can work, so the prompt is refused by validation (one line per node, no traceback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = comfyui.run(_graph(variant="ternary", release="mlx"))
    assert not result.success and result.error is None  # never executed
    errors = result.node_errors["1"]["errors"]
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "release"
    text = errors[0]["details"]
    assert text.startswith("release - HF_HUB_OFFLINE is set")
    for repo in ("bonsai-image-ternary-4B-mlx-2bit", "bonsai-image-binary-4B-mlx-1bit"):
        assert f"https://huggingface.co/prism-ml/{repo}/tree/main" in text and f"into {module_models / 'bonsai' / repo}/" in text


def test_the_node_writes_into_the_running_comfyui_not_comfyui_path(
    comfyui, module_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """The in-UI route with a second ComfyUI named by $COMFYUI_PATH: the files go where this ComfyUI's loaders look."""
    other = tmp_path / "other" / "ComfyUI"
    (other / "models").mkdir(parents=True)
    (other / "custom_nodes").mkdir()
    (other / "main.py").write_text("")
    monkeypatch.setenv("COMFYUI_PATH", str(other))
    files = {"model_index.json": b"{}", "vae/config.json": b'{"latent_channels": 32}', "transformer-gemlite-int2/config.json": b"{}"}
    server = HubServer({REPO: FakeRepo(REPO, files)}).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    try:
        result = comfyui.run(_graph(text_encoder=False))
    finally:
        server.stop()
    assert result.success, result.error
    assert Path(result.captured["dir"]) == module_models / "bonsai" / SNAP
    assert (module_models / "bonsai" / SNAP / "vae" / "config.json").is_file()
    assert not (other / "models" / "bonsai").exists()
