"""Small files of a synthetic release (JSON configs, the tokenizer folder), written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bonsai_core.atomic import atomic_path

# A Qwen3-style chat template (the branch FLUX.2 Klein uses: one user message, generation
# prompt, thinking disabled), shipped in ``chat_template.jinja`` as Qwen3 releases do.
FIXTURE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(src: str | Path, dst: Path) -> Path:
    """Ship the Qwen tokenizer folder ``src`` (vocab.json, merges.txt, ...) as ``dst``, the way Qwen3
    releases do: the chat template in ``chat_template.jinja``, not inside ``tokenizer_config.json``.

    A ``config.json`` in ``src`` is skipped: ``dst`` may be the MLX text-encoder folder itself,
    whose ``config.json`` is the model's."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.name != "config.json":
            shutil.copyfile(f, dst / f.name)
    tok_cfg = dst / "tokenizer_config.json"
    if tok_cfg.is_file():
        data = json.loads(tok_cfg.read_text(encoding="utf-8"))
        data.pop("chat_template", None)
        write_json(tok_cfg, data)
    (dst / "chat_template.jinja").write_text(FIXTURE_CHAT_TEMPLATE, encoding="utf-8")
    return dst
