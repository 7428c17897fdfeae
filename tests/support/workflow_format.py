"""ComfyUI workflow formats: validation against ``/object_info`` and conversion UI <-> API.

- API format: ``{node_id: {"class_type", "inputs": {name: value | [src_id, out_index]}}}``; what
  ``POST /prompt`` runs.
- UI format: ``{"nodes": [...], "links": [[id, from, from_slot, to, to_slot, type]], ...}``; what
  people drag into ComfyUI. Widget values are positional (``widgets_values``), in the order of the
  node's widget inputs, with one extra value after every widget that has a "control after
  generate" companion (``seed``/``noise_seed`` INTs, or ``control_after_generate`` in the options).

``scripts/build_workflows.py`` writes the UI form from the API form; the lint test checks both
against a live server's ``/object_info`` and that they describe the same graph.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

WIDGET_SCALARS = ("INT", "FLOAT", "STRING", "BOOLEAN")


def _is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_SCALARS or kind == "COMBO"


def _companion_value(name: str, spec):
    """The extra value the frontend stores after this widget, or None.

    Seeds (and ``control_after_generate`` widgets) get a "control after generate" combo;
    ``image_upload`` combos get an upload button whose stored value is "image".
    """
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
        return "fixed"
    if options.get("image_upload"):
        return "image"
    return None


def _has_control(name: str, spec) -> bool:
    return _companion_value(name, spec) is not None


def ordered_inputs(info: Dict[str, Any]) -> List[Tuple[str, list, bool]]:
    """``(name, spec, required)`` for every input in ComfyUI's order: required, then optional."""
    result = []
    for section, required in (("required", True), ("optional", False)):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            result.append((name, spec, required))
    return result


def widget_layout(info: Dict[str, Any]) -> List[Tuple[str, list, bool]]:
    """``(name, spec, has_control)`` of the widget inputs, in widgets_values order."""
    return [(n, s, _has_control(n, s)) for n, s, _ in ordered_inputs(info) if _is_widget(s)]


def check_widget_value(name: str, spec, value) -> List[str]:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        return [] if value in choices else [f"{name}: {value!r} is not one of {choices[:12]}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{name}: expected a boolean, got {value!r}"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{name}: expected a string, got {value!r}"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{name}: expected a number, got {value!r}"]
        if kind == "INT" and not float(value).is_integer():
            return [f"{name}: expected an integer, got {value!r}"]
        errors = []
        if "min" in options and value < options["min"]:
            errors.append(f"{name}: {value} is below the minimum {options['min']}")
        if "max" in options and value > options["max"]:
            errors.append(f"{name}: {value} is above the maximum {options['max']}")
        return errors
    return []


def _output_type(object_info, class_type, index):
    outputs = object_info[class_type]["output"]
    return outputs[index] if 0 <= index < len(outputs) else None


def _types_compatible(output_type: str, input_type) -> bool:
    if isinstance(input_type, list):
        return output_type == "COMBO" or isinstance(output_type, list)
    return output_type == input_type or "*" in (output_type, input_type)


def lint_api(prompt: Dict[str, Any], object_info: Dict[str, Any]) -> List[str]:
    errors = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        where = f"node {node_id} ({class_type})"
        if class_type not in object_info:
            errors.append(f"{where}: unknown node type")
            continue
        info = object_info[class_type]
        given = node.get("inputs", {})
        specs = {n: (s, r) for n, s, r in ordered_inputs(info)}
        for name in given:
            if name not in specs:
                errors.append(f"{where}: unknown input {name!r}")
        for name, (spec, required) in specs.items():
            if name not in given:
                if required:
                    errors.append(f"{where}: required input {name!r} missing")
                continue
            value = given[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = prompt.get(value[0])
                if source is None:
                    errors.append(f"{where}: input {name!r} links to missing node {value[0]}")
                    continue
                out_type = _output_type(object_info, source.get("class_type"), value[1]) \
                    if source.get("class_type") in object_info else None
                if out_type is None:
                    errors.append(f"{where}: input {name!r} links to a missing output {value}")
                elif not _types_compatible(out_type, spec[0]):
                    errors.append(f"{where}: input {name!r} expects {spec[0]}, linked to {out_type}")
            elif _is_widget(spec):
                errors.extend(f"{where}: {e}" for e in check_widget_value(name, spec, value))
            else:
                errors.append(f"{where}: input {name!r} of type {spec[0]} must be a link, got {value!r}")
    return errors


def ui_to_api(workflow: Dict[str, Any], object_info: Dict[str, Any]) -> Dict[str, Any]:
    """The API-format prompt a UI-format workflow describes (as the frontend's "Export (API)")."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue  # muted / bypassed nodes are not exported
        class_type = node["type"]
        inputs: Dict[str, Any] = {}
        info = object_info.get(class_type)
        if info is None:
            prompt[str(node["id"])] = {"class_type": class_type, "inputs": {}}
            continue
        values = list(node.get("widgets_values") or [])
        cursor = 0
        for name, spec, has_control in widget_layout(info):
            if cursor < len(values):
                inputs[name] = values[cursor]
            cursor += 2 if has_control else 1
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt


def lint_ui(workflow: Dict[str, Any], object_info: Dict[str, Any]) -> List[str]:
    errors = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    for node in nodes.values():
        where = f"node {node['id']} ({node.get('type')})"
        info = object_info.get(node.get("type"))
        if info is None:
            errors.append(f"{where}: unknown node type")
            continue
        layout = widget_layout(info)
        expected = sum(2 if control else 1 for _, _, control in layout)
        values = node.get("widgets_values") or []
        if len(values) != expected:
            errors.append(f"{where}: {len(values)} widget values, the node has {expected} "
                          f"({[n for n, _, _ in layout]})")
            continue
        cursor = 0
        for name, spec, control in layout:
            errors.extend(f"{where}: {e}" for e in check_widget_value(name, spec, values[cursor]))
            cursor += 2 if control else 1
    for link in workflow.get("links", []):
        link_id, src, src_slot, dst, dst_slot, link_type = link[:6]
        if src not in nodes or dst not in nodes:
            errors.append(f"link {link_id}: refers to a missing node")
            continue
        src_info = object_info.get(nodes[src]["type"])
        if src_info and _output_type(object_info, nodes[src]["type"], src_slot) != link_type:
            errors.append(f"link {link_id}: type {link_type} does not match the source output")
    errors.extend(lint_api(ui_to_api(workflow, object_info), object_info))
    return errors


def api_to_ui(prompt: Dict[str, Any], object_info: Dict[str, Any], titles: Dict[str, str] = None) -> Dict[str, Any]:
    """A UI-format workflow for an API-format prompt, laid out left to right by dependency depth."""
    titles = titles or {}
    depth: Dict[str, int] = {}

    def node_depth(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values()
                       if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
            depth[node_id] = 1 + max((node_depth(s) for s in sources), default=-1)
        return depth[node_id]

    order = sorted(prompt, key=lambda i: (node_depth(i), int(i)))
    rows: Dict[int, int] = {}
    nodes, links = [], []
    outputs_links: Dict[Tuple[str, int], List[int]] = {}
    for node_id in order:
        node = prompt[node_id]
        info = object_info[node["class_type"]]
        for name, spec, _ in ordered_inputs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                link_id = len(links) + 1
                out_type = _output_type(object_info, prompt[value[0]]["class_type"], value[1])
                links.append([link_id, int(value[0]), value[1], int(node_id), None, out_type])
                outputs_links.setdefault((value[0], value[1]), []).append(link_id)
    for index, node_id in enumerate(order):
        node = prompt[node_id]
        info = object_info[node["class_type"]]
        column = node_depth(node_id)
        row = rows.get(column, 0)
        rows[column] = row + 1
        widgets = []
        for name, spec, control in widget_layout(info):
            widgets.append(node["inputs"].get(name, (spec[1] or {}).get("default") if len(spec) > 1 else None))
            if control:
                widgets.append(_companion_value(name, spec))
        slots = []
        for name, spec, _ in ordered_inputs(info):
            if _is_widget(spec):
                continue
            value = node["inputs"].get(name)
            link_id = None
            if isinstance(value, list):
                link_id = next(l[0] for l in links if l[3] == int(node_id) and l[1] == int(value[0])
                               and l[2] == value[1] and l[4] is None)
                for l in links:
                    if l[0] == link_id:
                        l[4] = len(slots)
            slots.append({"name": name, "type": spec[0], "link": link_id})
        outputs = []
        for out_index, out_type in enumerate(info["output"]):
            outputs.append({"name": info["output_name"][out_index], "type": out_type,
                            "links": outputs_links.get((node_id, out_index), []), "slot_index": out_index})
        entry = {"id": int(node_id), "type": node["class_type"], "pos": [60 + 380 * column, 60 + 330 * row],
                 "size": [340, 60 + 26 * (len(widgets) + len(slots) + len(outputs))], "flags": {}, "order": index,
                 "mode": 0, "inputs": slots, "outputs": outputs,
                 "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = titles.get(node_id) or node.get("_meta", {}).get("title")
        if title:
            entry["title"] = title
        nodes.append(entry)
    for l in links:
        if l[4] is None:
            raise ValueError(f"link {l} could not be attached to an input slot")
    return {"last_node_id": max(int(i) for i in prompt), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
            "version": 0.4}
