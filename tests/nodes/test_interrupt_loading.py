"""ComfyUI's ``/interrupt`` stops the pack's own long work: loading a model or a text encoder.

``/interrupt`` sets ComfyUI's processing-interrupted flag; stock ops check it per layer while they
run, but loading a 4B model or text encoder used to run to the end whatever the flag said. Each packed
layer now checks the flag as it is loaded, so a load stops at the next layer with ComfyUI's own
``InterruptProcessingException`` (reported as "interrupted", not as an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bonsai_tools.synth import make_fixture

pytestmark = pytest.mark.comfyui


@pytest.fixture()
def interrupted() -> Any:
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        yield mm.InterruptProcessingException
    finally:
        mm.interrupt_current_processing(False)


def test_interrupt_stops_a_model_load(comfyui: Any, comfy_models: Path) -> None:
    path = comfy_models / "bonsai" / "interrupt-me-binary.safetensors"
    make_fixture("binary", "tiny", "canonical", 5, path)
    loader = comfyui.pack("nodes.model_loader")
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            loader.load_bonsai_model(path, "auto", "fp32")
    finally:
        mm.interrupt_current_processing(False)
    assert loader.load_bonsai_model(path, "auto", "fp32") is not None  # the flag cleared, the same load runs


def test_interrupt_stops_a_text_encoder_load(comfyui: Any, te_node: Any, tiny_tes: dict[str, Path], interrupted: Any) -> None:
    with pytest.raises(interrupted):
        te_node.load_packed_clip(tiny_tes["hqq"])
