"""What a workflow file needs to know about a node: its inputs (widgets and sockets) and outputs.

Read from a live ComfyUI node class (V1, or V3 through its V1-compatible properties) without
importing ComfyUI here, so the workflow writers and the tests share one description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class InputSpec:
    """One input of a node as the frontend sees it."""

    name: str
    type: str  # "COMBO" for option lists
    is_widget: bool
    optional: bool
    options: tuple[Any, ...] | None = None  # combo options
    control_after_generate: bool = False  # the frontend adds a "fixed/randomize" widget value after it
    image_upload: bool = False  # the frontend adds an "upload" widget value after it
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class NodeSchema:
    """The parts of a node definition that a workflow file depends on."""

    type: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[tuple[str, str], ...]  # (name, type)
    python_module: str = "nodes"  # where ComfyUI loaded the class from ("custom_nodes.<pack>" for packs)

    @property
    def widgets(self) -> list[InputSpec]:
        return [i for i in self.inputs if i.is_widget]

    @property
    def sockets(self) -> list[InputSpec]:
        return [i for i in self.inputs if not i.is_widget]

    def input(self, name: str) -> InputSpec:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(f"{self.type} has no input {name!r}")

    @classmethod
    def from_node_class(cls, type_name: str, node_class: Any) -> NodeSchema:
        """Read a live ComfyUI node class (V1, or V3 through its V1-compatible properties)."""
        specs: list[InputSpec] = []
        for section in ("required", "optional"):
            for name, entry in (node_class.INPUT_TYPES().get(section) or {}).items():
                specs.append(_input_spec(name, entry, section == "optional"))
        types = [str(t) for t in node_class.RETURN_TYPES]
        names = list(getattr(node_class, "RETURN_NAMES", None) or types)
        module = str(getattr(node_class, "RELATIVE_PYTHON_MODULE", None) or "nodes")
        return cls(type_name, tuple(specs), tuple((str(n), t) for n, t in zip(names, types)), module)


def _input_spec(name: str, entry: Any, optional: bool) -> InputSpec:
    kind = entry[0]
    opts: dict[str, Any] = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    options: tuple[Any, ...] | None = None
    if isinstance(kind, (list, tuple)):
        options, type_name = tuple(kind), "COMBO"
    else:
        type_name = str(kind)
        if type_name == "COMBO":
            options = tuple(opts.get("options") or ())
    is_widget = type_name in WIDGET_TYPES and not opts.get("forceInput", False)
    return InputSpec(
        name=name,
        type=type_name,
        is_widget=is_widget,
        optional=optional,
        options=options,
        control_after_generate=bool(opts.get("control_after_generate", False)),
        image_upload=bool(opts.get("image_upload", False)),
        minimum=opts.get("min"),
        maximum=opts.get("max"),
    )
