"""One graph description, two ComfyUI workflow formats.

The shipped workflows exist twice: UI format (what the frontend loads, with node positions,
sockets and a links array, ``version`` 0.4) and API format (what ``POST /prompt`` and
``comfy run`` take). Both are produced from one :class:`Graph` so they cannot drift, and both
can be read back into the same canonical form (:func:`canonical_from_ui`, :func:`canonical_from_api`)
so a test can prove that hand edits kept them equal.

ComfyUI is not imported here: node schemas come in as the ``INPUT_TYPES()`` / ``RETURN_TYPES`` /
``RETURN_NAMES`` of the live node classes (:class:`~.schema.NodeSchema`), so the same code serves
the generator (run inside ComfyUI) and the tests (which validate against the live registry).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .schema import InputSpec, NodeSchema

UI_VERSION = 0.4
# Registry ids the frontend/Manager use to offer installing a missing node (``properties.cnr_id``).
CORE_CNR_ID = "comfy-core"
PACK_CNR_ID = "bonsai-image"  # pyproject [project] name = the Comfy Registry id of this pack


@dataclass
class Node:
    """A node of a workflow: widget values by name, links by input name -> (source node id, output slot)."""

    id: int
    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    pos: tuple[float, float] = (0.0, 0.0)
    size: tuple[float, float] | None = None
    title: str | None = None
    control: str = "fixed"  # value of the frontend's control_after_generate widget, where the node has one
    # ``properties.models`` of the UI node: [{name, url, directory}] for files a widget names; the
    # frontend matches them to widget values to offer a download when the file is missing.
    models: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Graph:
    """A workflow graph plus the notes the UI file carries."""

    name: str
    nodes: list[Node]
    notes: list[tuple[str, tuple[float, float], tuple[float, float]]] = field(default_factory=list)  # (markdown, pos, size)
    # The view the frontend restores when the file is opened (``extra.ds``): canvas offset and zoom.
    ds_offset: tuple[float, float] = (0.0, 0.0)
    ds_scale: float = 1.0
    # Workflow-level ``models`` list: every file the graph needs, with its download URL and models folder.
    models: list[dict[str, str]] = field(default_factory=list)

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------


def to_api(graph: Graph) -> dict[str, Any]:
    """The API-format prompt: ``{"<id>": {"class_type", "inputs", "_meta"}}``."""
    out: dict[str, Any] = {}
    for n in graph.nodes:
        inputs: dict[str, Any] = {k: v for k, v in n.widgets.items() if k not in n.links}
        inputs.update({k: [str(src), slot] for k, (src, slot) in n.links.items()})
        out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
    return out


def _widget_values(node: Node, schema: NodeSchema) -> list[Any]:
    values: list[Any] = []
    for w in schema.widgets:
        if w.name not in node.widgets:
            raise ValueError(f"{node.type} #{node.id}: no value for widget {w.name!r}")
        values.append(node.widgets[w.name])
        if w.control_after_generate:
            values.append(node.control)
        if w.image_upload:
            values.append("image")
    unknown = set(node.widgets) - {w.name for w in schema.widgets}
    if unknown:
        raise ValueError(f"{node.type} #{node.id}: {sorted(unknown)} are not widgets of this node")
    return values


def to_ui(graph: Graph, schemas: dict[str, NodeSchema]) -> dict[str, Any]:
    """The frontend (LiteGraph, version 0.4) workflow for ``graph``; node metadata from ``schemas``."""
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    in_link: dict[tuple[int, str], int] = {}
    link_id = 0
    for n in graph.nodes:
        schema = schemas[n.type]
        for name, (src, slot) in n.links.items():
            src_type = schemas[graph.node(src).type].outputs[slot][1]
            ui_inputs = _ui_input_names(n, schema)
            link_id += 1
            links.append([link_id, src, slot, n.id, ui_inputs.index(name), src_type])
            out_links.setdefault((src, slot), []).append(link_id)
            in_link[(n.id, name)] = link_id
    nodes: list[dict[str, Any]] = []
    order = _execution_order(graph)
    for n in graph.nodes:
        schema = schemas[n.type]
        inputs = []
        for name in _ui_input_names(n, schema):
            spec = schema.input(name)
            entry: dict[str, Any] = {"localized_name": name, "name": name, "type": spec.type}
            if spec.is_widget:
                entry["widget"] = {"name": name}
            entry["link"] = in_link.get((n.id, name))
            inputs.append(entry)
        outputs = []
        for slot, (oname, otype) in enumerate(schema.outputs):
            outputs.append(
                {"localized_name": oname, "name": oname, "type": otype, "slot_index": slot, "links": out_links.get((n.id, slot), [])}
            )
        ui: dict[str, Any] = {
            "id": n.id,
            "type": n.type,
            "pos": list(n.pos),
            "size": list(n.size or _default_size(schema)),
            "flags": {},
            "order": order[n.id],
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {
                "cnr_id": PACK_CNR_ID if schema.python_module.startswith("custom_nodes.") else CORE_CNR_ID,
                "Node name for S&R": n.type,
            },
            "widgets_values": _widget_values(n, schema),
        }
        if n.models:
            ui["properties"]["models"] = [dict(m) for m in n.models]
        if n.title:
            ui["title"] = n.title
        nodes.append(ui)
    next_id = max(n.id for n in graph.nodes)
    for text, pos, size in graph.notes:
        next_id += 1
        nodes.append(
            {
                "id": next_id,
                "type": "MarkdownNote",
                "title": "Read me first: models and how to get them",
                "pos": list(pos),
                "size": list(size),
                "flags": {},
                "order": len(nodes),
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {},
                "widgets_values": [text],
                "color": "#432",
                "bgcolor": "#653",
            }
        )
    out: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bonsai-image/workflows/{graph.name}")),
        "revision": 0,
        "last_node_id": next_id,
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": graph.ds_scale, "offset": list(graph.ds_offset)}},
        "version": UI_VERSION,
    }
    if graph.models:
        out["models"] = [dict(m) for m in graph.models]
    return out


def _ui_input_names(node: Node, schema: NodeSchema) -> list[str]:
    """Input slots in the UI file: every socket, plus widgets that are driven by a link, in schema order."""
    return [i.name for i in schema.inputs if not i.is_widget or i.name in node.links]


def _default_size(schema: NodeSchema) -> tuple[float, float]:
    rows = max(len(schema.sockets), len(schema.outputs)) + len(schema.widgets)
    return (300.0, 46.0 + 24.0 * rows)


def _execution_order(graph: Graph) -> dict[int, int]:
    """A topological order (the frontend recomputes it; a valid one keeps the file tidy)."""
    deps = {n.id: {src for src, _ in n.links.values()} for n in graph.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        if not ready:
            raise ValueError(f"{graph.name}: the graph has a cycle")
        for i in ready:
            order[i] = len(order)
    return order


# ---------------------------------------------------------------------------
# readers: a canonical form both formats reduce to
# ---------------------------------------------------------------------------

Canonical = dict[str, tuple[str, tuple[tuple[str, Any], ...], tuple[tuple[str, str, int], ...]]]


def canonical_from_api(api: dict[str, Any]) -> Canonical:
    """node id -> (type, sorted widget values by name, sorted links as (input, source id, slot))."""
    out: Canonical = {}
    for nid, n in api.items():
        widgets, links = [], []
        for k, v in n["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
                links.append((k, v[0], v[1]))
            else:
                widgets.append((k, v))
        out[str(nid)] = (n["class_type"], tuple(sorted(widgets)), tuple(sorted(links)))
    return out


def canonical_from_ui(ui: dict[str, Any], schemas: dict[str, NodeSchema]) -> Canonical:
    """The same canonical form read from a UI file (notes skipped); widget values are mapped by schema order."""
    link_by_id = {lk[0]: lk for lk in ui["links"]}
    out: Canonical = {}
    for n in ui["nodes"]:
        if n["type"] in ("MarkdownNote", "Note"):
            continue
        schema = schemas[n["type"]]
        values = list(n.get("widgets_values") or [])
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        widgets = []
        for w in schema.widgets:
            if not values:
                raise ValueError(f"{n['type']} #{n['id']}: too few widget values")
            v = values.pop(0)
            if w.control_after_generate:
                values.pop(0)
            if w.image_upload:
                values.pop(0)
            if w.name not in linked:
                widgets.append((w.name, v))
        links = []
        for i in n.get("inputs", []):
            if i.get("link") is not None:
                lk = link_by_id[i["link"]]
                links.append((i["name"], str(lk[1]), int(lk[2])))
        out[str(n["id"])] = (n["type"], tuple(sorted(widgets)), tuple(sorted(links)))
    return out


def validate_ui(ui: dict[str, Any], schemas: dict[str, NodeSchema]) -> list[str]:
    """Every problem that would stop the frontend from loading the file or the server from running it.

    Checks node types, widget counts, combo values and numeric ranges, every link's endpoints and
    types, the nodes' own link bookkeeping, and that required sockets are connected.
    """
    errors: list[str] = []
    if ui.get("version") != UI_VERSION:
        errors.append(f"version is {ui.get('version')!r}, expected {UI_VERSION}")
    nodes = {n["id"]: n for n in ui.get("nodes", [])}
    if len(nodes) != len(ui.get("nodes", [])):
        errors.append("duplicate node ids")
    for n in nodes.values():
        t = n.get("type")
        for key in ("id", "type", "pos", "size", "inputs", "outputs", "widgets_values", "mode"):
            if key not in n:
                errors.append(f"node {n.get('id')} ({t}): missing '{key}'")
        if t in ("MarkdownNote", "Note"):
            continue
        if t not in schemas:
            errors.append(f"node {n['id']}: unknown node type {t!r}")
            continue
        schema = schemas[t]
        expected = sum(1 + w.control_after_generate + w.image_upload for w in schema.widgets)
        values = list(n.get("widgets_values") or [])
        if len(values) != expected:
            errors.append(f"node {n['id']} ({t}): {len(values)} widget values, the node has {expected}")
            continue
        for w in schema.widgets:
            v = values.pop(0)
            errors.extend(_check_widget(n["id"], t, w, v))
            if w.control_after_generate:
                c = values.pop(0)
                if c not in ("fixed", "increment", "decrement", "randomize"):
                    errors.append(f"node {n['id']} ({t}): control_after_generate value {c!r}")
            if w.image_upload:
                values.pop(0)
        in_names = [i["name"] for i in n.get("inputs", [])]
        for i in n.get("inputs", []):
            try:
                spec = schema.input(i["name"])
            except KeyError:
                errors.append(f"node {n['id']} ({t}): unknown input {i['name']!r}")
                continue
            if i.get("type") != spec.type:
                errors.append(f"node {n['id']} ({t}): input {i['name']!r} has type {i.get('type')!r}, the node says {spec.type!r}")
        for s in schema.sockets:
            if not s.optional and s.name not in in_names:
                errors.append(f"node {n['id']} ({t}): required input {s.name!r} has no slot")
        for i in n.get("inputs", []):
            if i.get("link") is None and i["name"] in {s.name for s in schema.sockets if not s.optional}:
                errors.append(f"node {n['id']} ({t}): required input {i['name']!r} is not connected")
        if len(n.get("outputs", [])) != len(schema.outputs):
            errors.append(f"node {n['id']} ({t}): {len(n.get('outputs', []))} outputs, the node has {len(schema.outputs)}")
        for slot, o in enumerate(n.get("outputs", [])[: len(schema.outputs)]):
            if o.get("type") != schema.outputs[slot][1]:
                errors.append(f"node {n['id']} ({t}): output {slot} type {o.get('type')!r}, the node says {schema.outputs[slot][1]!r}")
    seen_links: set[int] = set()
    for lk in ui.get("links", []):
        if len(lk) != 6:
            errors.append(f"link {lk!r}: expected [id, origin, slot, target, slot, type]")
            continue
        lid, src, sslot, dst, dslot, ltype = lk
        if lid in seen_links:
            errors.append(f"link {lid}: duplicate id")
        seen_links.add(lid)
        if src not in nodes or dst not in nodes:
            errors.append(f"link {lid}: endpoint node missing")
            continue
        so, di = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if sslot >= len(so) or lid not in (so[sslot].get("links") or []):
            errors.append(f"link {lid}: not listed on output {sslot} of node {src}")
        elif so[sslot].get("type") != ltype:
            errors.append(f"link {lid}: type {ltype!r} but output {sslot} of node {src} is {so[sslot].get('type')!r}")
        if dslot >= len(di) or di[dslot].get("link") != lid:
            errors.append(f"link {lid}: not the link of input {dslot} of node {dst}")
        elif di[dslot].get("type") not in (ltype, "*") and not (di[dslot].get("type") == "COMBO" and ltype == "COMBO"):
            errors.append(f"link {lid}: {ltype!r} into {di[dslot].get('type')!r} input {di[dslot]['name']!r} of node {dst}")
    for n in nodes.values():
        for i in n.get("inputs", []):
            if i.get("link") is not None and i["link"] not in seen_links:
                errors.append(f"node {n['id']}: input {i['name']!r} points at missing link {i['link']}")
        for o in n.get("outputs", []):
            for lid in o.get("links") or []:
                if lid not in seen_links:
                    errors.append(f"node {n['id']}: output {o.get('name')!r} lists missing link {lid}")
    if ui.get("last_link_id", 0) < max(seen_links, default=0):
        errors.append("last_link_id is below the highest link id")
    if ui.get("last_node_id", 0) < max(nodes, default=0):
        errors.append("last_node_id is below the highest node id")
    return errors


def _check_widget(node_id: int, node_type: str, w: InputSpec, v: Any) -> list[str]:
    where = f"node {node_id} ({node_type}): widget {w.name!r}"
    if w.type == "COMBO":
        if w.options is not None and v not in w.options:
            return [f"{where} value {v!r} is not one of the options ({len(w.options)} available)"]
        return []
    if w.type == "INT" and (isinstance(v, bool) or not isinstance(v, int)):
        return [f"{where} expects INT, got {v!r}"]
    if w.type == "FLOAT" and (isinstance(v, bool) or not isinstance(v, (int, float))):
        return [f"{where} expects FLOAT, got {v!r}"]
    if w.type == "STRING" and not isinstance(v, str):
        return [f"{where} expects STRING, got {v!r}"]
    if w.type == "BOOLEAN" and not isinstance(v, bool):
        return [f"{where} expects BOOLEAN, got {v!r}"]
    if w.type in ("INT", "FLOAT"):
        if w.minimum is not None and v < w.minimum:
            return [f"{where} value {v} is below the minimum {w.minimum}"]
        if w.maximum is not None and v > w.maximum:
            return [f"{where} value {v} is above the maximum {w.maximum}"]
    return []
