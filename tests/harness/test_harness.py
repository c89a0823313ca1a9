"""The shared in-process ComfyUI harness (tests/harness/) itself: what a real server provides
that stock nodes rely on is there in every test session, not only inside one module's fixture."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.comfyui


def test_prompt_server_instance_for_stock_nodes(comfyui: Any) -> None:
    # GetImageSize sends its text through server.PromptServer.instance (set by main.py in a real server).
    import server

    assert server.PromptServer.instance is comfyui.server
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 2, "color": 0}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["2", 0], "label": "w"}},
        "4": {"class_type": "BonsaiTestCapture", "inputs": {"value": ["2", 2], "label": "b"}},
    }
    result = comfyui.run(graph)
    assert result.success, result.error
    assert (result.captured["w"], result.captured["b"]) == (48, 2)
    texts = [data for event, data in comfyui.server.events if event == "progress_text" and data[0] == "2"]
    assert texts and "width: 48, height: 32" in texts[-1][1]


def test_builtin_node_replacements_registered(comfyui: Any) -> None:
    # comfy_extras/nodes_replacements.py registers through PromptServer.instance while the built-in nodes load.
    assert comfyui.server.node_replace_manager.has_replacement("ResizeImagesByLongerEdge")
