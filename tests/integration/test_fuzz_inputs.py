"""Fuzz every widget input of every pack node of the shipped workflows through the real server.

For each pack node type of ``workflows/api/*.json`` (in the shipped workflow where it has the
fewest upstream nodes) and each of its widget inputs (those the workflow sets and the optional ones
it leaves out), seeded hostile values of the input's type (huge, negative,
NaN/inf, strings for numbers, floats for integers, booleans, null, unknown choices, path traversal
for files, malformed JSON, megabyte strings) are queued through ``POST /prompt``. Each prompt is
pruned to the node, its upstream nodes and one cheap output node, so what runs is small (and
mostly cached).

Every case must end in one of:
- refused at validation: HTTP 400 whose ``node_errors`` for the fuzzed node carry the pack's message
  (``<display name>: <input> must ...``);
- failed at run time with the pack's message (``NodeInputError``, starting with a pack node's name);
- ran, and then only for a value inside the input's declared schema (an independent reading of
  ``/object_info``: type, finiteness, min/max, options; plus the pack's length caps).
No bare Python error, the server answers afterwards, and a refused or failed case leaves no file
(and no case a partial one) in ``output/`` or ``temp/``.

Counts (refused / failed with a message / ran, each with how many met the rules above) are printed, and written as JSON to
``$CVD_FUZZ_REPORT`` when set, even when the test fails, one entry per server id with each case's outcome
(to compare code versions:
``CVD_FUZZ_REPORT=/tmp/fuzz.json scripts/run_tests.sh tests/integration/test_fuzz_inputs.py -s``). Bounded: at most
``PER_INPUT`` values per input, one seed, and a time budget after which the remaining cases are
skipped with a warning.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.support.comfy_harness import ComfyError
from tests.support.pack_info import api_workflows, pack_schemas

pytestmark = pytest.mark.integration

SEED = 15
PER_INPUT = 5
BUDGET_S = float(os.environ.get("CVD_FUZZ_BUDGET_S", "150"))
CASE_TIMEOUT_S = 120
MEGABYTE = "A" * (1 << 20)
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FILE_HINTS = ("file", "name", "checkpoint", "motion_module", "adapter", "cameractrl", "cvd")
JSON_INPUTS = ("custom_json", "plan_json", "llm_answer")

# Cheap output nodes to end a pruned prompt, by the type of the fuzzed node's output.
CHEAP_SINKS = {
    "CVD_CAMERAS": lambda link: [("CVD_CameraPreview", {"cameras": link, "width": 256, "height": 128})],
    "IMAGE": lambda link: [("PreviewImage", {"images": link})],
    "MASK": lambda link: [("MaskToImage", {"mask": link}), ("PreviewImage", {"images": "previous"})],
    "CVD_MODEL": lambda link: [("CVD_ModelInfo", {"cvd_model": link})],
    "CVD_LAYOUT": lambda link: [("CVD_LayoutPreview", {"layout": link, "mode": "one_per_view", "alpha": 0.35})],
}
SAVE_TO_PREVIEW = {"SaveImage": "PreviewImage"}


# ------------------------------------------------------------------------------ hostile values

def hostile_values(kind: str, name: str, spec: dict, options: List[str]) -> List[Any]:
    low, high = spec.get("min"), spec.get("max")
    if kind == "INT":
        values = [10 ** 30, -1, -(2 ** 63) - 1, math.nan, math.inf, "abc", "4", 3.7, True, None, {"x": 1}]
        values += [low - 1] if low is not None else []
        values += [high + 1] if high is not None else []
    elif kind == "FLOAT":
        values = [math.nan, math.inf, -math.inf, 1e300, -1e9, "abc", "0.5", True, None, [1.0]]
        values += [low - 1.0] if low is not None else []
        values += [high * 2 + 1.0] if high is not None else []
    elif kind == "BOOLEAN":
        values = ["false", "true", 0, 1, None, 2.5, "yes"]
    elif kind == "COMBO":
        values = ["does-not-exist", "", 0, None, True, (options[0].upper() + "x") if options else "X",
                  "../../../../etc/passwd", "..\\..\\main.py", "/etc/passwd", MEGABYTE]
        if any(hint in name for hint in FILE_HINTS):
            values += ["cvd_poses/../../main.py", "../models/checkpoints/x.safetensors"] * 2
    else:  # STRING
        values = [MEGABYTE + "!", 42, None, "../../../../etc/passwd", "\x00\ud800 ", ""]
        if name in JSON_INPUTS:
            values += ['{"views": [', "[1, 2", "null", '{"views": "x"}', "[" * 50_000, '{"entities": 7}'] * 2
    return [v for v in values if not (isinstance(v, list) and len(v) == 2)]  # a 2-list is a link


def inside_schema(kind: str, value: Any, spec: dict, options: List[str], cap: Optional[int]) -> bool:
    """Whether ``value`` is allowed by the declared schema, read independently of the pack's checks."""
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if kind == "INT" and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if not math.isfinite(value):
            return False
        return spec.get("min", -math.inf) <= value <= spec.get("max", math.inf)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if not isinstance(value, str):
        return False
    if kind == "COMBO":
        return value in options
    return cap is None or len(value) <= cap


# ------------------------------------------------------------------------------ pruned prompts

def _links(node: dict):
    return [(name, v) for name, v in node["inputs"].items() if isinstance(v, list) and len(v) == 2]


def _ancestors(prompt: dict, node_id: str) -> set:
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [v[0] for _, v in _links(prompt[current])]
    return seen


def _consumers(prompt: dict, node_id: str):
    return [k for k, node in prompt.items() if any(v[0] == node_id for _, v in _links(node))]


def _path_to_output(prompt: dict, node_id: str, outputs: set) -> List[str]:
    """Shortest chain of downstream nodes from ``node_id`` to an output node of the workflow."""
    frontier, parent = [node_id], {node_id: None}
    while frontier:
        current = frontier.pop(0)
        if current in outputs and current != node_id:
            chain = []
            while current != node_id:
                chain.append(current)
                current = parent[current]
            return chain[::-1]
        for nxt in _consumers(prompt, current):
            if nxt not in parent:
                parent[nxt] = current
                frontier.append(nxt)
    return []


def pruned_prompt(prompt: dict, node_id: str, output_types: Dict[str, List[str]], outputs: set) -> dict:
    """The node, its upstream nodes and one cheap output node (or the workflow's own path to one)."""
    keep = _ancestors(prompt, node_id)
    pruned = {k: copy.deepcopy(prompt[k]) for k in keep}
    if node_id in outputs:
        return pruned
    for slot, kind in enumerate(output_types[prompt[node_id]["class_type"]]):
        sink = CHEAP_SINKS.get(kind)
        if sink is None:
            continue
        previous = [node_id, slot]
        for index, (class_type, inputs) in enumerate(sink([node_id, slot])):
            sink_id = f"fuzz_sink_{index}"
            inputs = {k: (previous if v == "previous" else v) for k, v in inputs.items()}
            pruned[sink_id] = {"class_type": class_type, "inputs": inputs}
            previous = [sink_id, 0]
        return pruned
    for chained in _path_to_output(prompt, node_id, outputs):
        for k in _ancestors(prompt, chained):
            pruned.setdefault(k, copy.deepcopy(prompt[k]))
    for node in pruned.values():
        node["class_type"] = SAVE_TO_PREVIEW.get(node["class_type"], node["class_type"])
        if node["class_type"] == "PreviewImage":
            node["inputs"].pop("filename_prefix", None)
    return pruned


# ------------------------------------------------------------------------------ one case

def _files(folder: Path) -> set:
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _partial(names: set) -> List[str]:
    return [n for n in names if any(part.startswith(".") or part.endswith((".partial", ".old", ".tmp"))
                                    for part in Path(n).parts)]


def _pack_errors(answer: dict, node_id: str) -> str:
    errors = answer.get("node_errors", {}).get(node_id, {}).get("errors", [])
    return " | ".join(f"{e.get('message')}: {e.get('details')}" for e in errors)


def run_case(server, prompt: dict, node_id: str, display: str, names: Dict[str, str], input_name: str):
    """``(outcome, in_pack_words, detail)``; outcome ``refused`` (HTTP 400), ``failed`` (a NodeInputError
    while running), ``bare_error`` (any other error, or another HTTP status), ``timeout`` or ``ran``."""
    try:
        prompt_id = server.queue(prompt)
    except ComfyError as exc:
        if exc.status != 400:
            return "bare_error", False, f"HTTP {exc.status}: {exc}"
        ours = _pack_errors(exc.payload, node_id)
        words = f"{display}: " in ours and input_name in ours
        return "refused", words, ours if words else json.dumps(exc.payload)[:600]
    try:
        server.wait(prompt_id, timeout=CASE_TIMEOUT_S)
    except ComfyError as exc:
        entry = exc.payload if isinstance(exc.payload, dict) else {}
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                message = str(data.get("exception_message", ""))
                detail = f"{data.get('node_type')}: {data.get('exception_type')}: {message[:300]}"
                if not str(data.get("exception_type", "")).endswith("NodeInputError"):
                    return "bare_error", False, detail
                pack_node = names.get(data.get("node_type"))
                return "failed", bool(pack_node) and message.startswith(f"{pack_node}: "), detail
        return ("timeout" if "did not finish" in str(exc) else "bare_error"), False, str(exc)[:300]
    return "ran", True, ""


# ------------------------------------------------------------------------------ the test

def cheapest_contexts(info: dict) -> Dict[str, Tuple[str, str, dict]]:
    """``{pack class: (workflow, node id, pruned prompt)}``: of all shipped workflows holding the class,
    the one whose pruned prompt has the fewest nodes (a value that passes validation runs little)."""
    best: Dict[str, Tuple[str, str, dict]] = {}
    schemas = {s.node_id for s in pack_schemas()}
    for workflow, prompt, _ in api_workflows():
        if any(v["class_type"] not in info for v in prompt.values()):
            continue  # needs core nodes this ComfyUI lacks (GUIDER sampling on 2024-03): fuzzed on the other
        outputs = {k for k, v in prompt.items() if info[v["class_type"]].get("output_node")}
        output_types = {v["class_type"]: info[v["class_type"]]["output"] for v in prompt.values()}
        for node_id, node in prompt.items():
            if node["class_type"] in schemas:
                pruned = pruned_prompt(prompt, node_id, output_types, outputs)
                if node["class_type"] not in best or len(pruned) < len(best[node["class_type"]][2]):
                    best[node["class_type"]] = (workflow, node_id, pruned)
    return best


def fuzz_cases(info: dict) -> List[Tuple[str, str, str, str, Any, dict]]:
    """``[(workflow, node id, class, input, value, prompt)]``: seeded; every widget of every pack node
    type of the shipped workflows, in its cheapest workflow."""
    rng = random.Random(SEED)
    schemas = {s.node_id: s for s in pack_schemas()}
    cases = []
    for class_type, (workflow, node_id, base) in sorted(cheapest_contexts(info).items()):
        specs = dict(info[class_type]["input"]["required"], **info[class_type]["input"].get("optional", {}))
        for item in schemas[class_type].inputs:
            if item.type not in WIDGETS:
                continue
            spec = specs[item.name]
            options = spec[0] if isinstance(spec[0], list) else []
            candidates = hostile_values(item.type, item.name, spec[1] if len(spec) > 1 else {}, options)
            # the declared default is not hostile: it runs the whole workflow (e.g. devices '' samples)
            default = getattr(item, "default", None)
            candidates = [v for v in candidates if not (type(v) is type(default) and v == default)]
            for value in rng.sample(candidates, min(PER_INPUT, len(candidates))):
                fuzzed = copy.deepcopy(base)
                fuzzed[node_id]["inputs"][item.name] = value
                cases.append((workflow, node_id, class_type, item.name, value, fuzzed))
    return cases


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + f"...({len(text)} chars)"


def _write_report(server_id: str, report: dict) -> None:
    """Adds this server's entry to ``$CVD_FUZZ_REPORT`` (the other server's entry is kept)."""
    path = Path(os.environ["CVD_FUZZ_REPORT"])
    reports = json.loads(path.read_text()) if path.is_file() else {}
    reports[server_id] = report
    path.write_text(json.dumps(reports, indent=2))


def test_hostile_widget_values_are_refused_or_fail_with_the_pack_message(each_comfy_server, request):
    comfy_server = each_comfy_server
    server_id = request.node.callspec.id
    info = comfy_server.object_info()
    schemas = {s.node_id: s for s in pack_schemas()}
    names = {s.node_id: s.display_name for s in schemas.values()}
    output_dir, temp_dir = comfy_server.output_dir, comfy_server.root / "temp"
    cases = fuzz_cases(info)
    counts, problems, outcomes = Counter(), [], []
    started = time.monotonic()
    skipped = 0
    for workflow, node_id, class_type, name, value, prompt in cases:
        if time.monotonic() - started > BUDGET_S:
            skipped += 1
            continue
        before = _files(output_dir) | {f"temp/{n}" for n in _files(temp_dir)}
        outcome, words, detail = run_case(comfy_server, prompt, node_id, names[class_type], names, name)
        after = _files(output_dir) | {f"temp/{n}" for n in _files(temp_dir)}
        spec_all = dict(info[class_type]["input"]["required"], **info[class_type]["input"].get("optional", {}))
        spec = spec_all[name]
        options = spec[0] if isinstance(spec[0], list) else []
        item = schemas[class_type].input(name) if hasattr(schemas[class_type], "input") else None
        kind = item.type if item is not None else ("COMBO" if options else spec[0])
        cap = getattr(item, "length_cap", None)
        inside = inside_schema(kind, value, spec[1] if len(spec) > 1 else {}, options, cap)
        counts[outcome] += 1
        where = f"{workflow} #{node_id} {class_type}.{name} = {_shown(value)}"
        outcomes.append([where, outcome])
        if outcome in ("refused", "failed") and words:
            counts[f"{outcome}_in_pack_words"] += 1
        elif outcome in ("refused", "failed"):
            problems.append(f"{outcome}, not in the pack's words: {where}: {detail}")
        elif outcome == "ran" and not inside:
            counts["ran_outside_schema"] += 1
            problems.append(f"ran outside the schema: {where}")
        elif outcome != "ran":
            problems.append(f"{outcome}: {where}: {detail}")
        new_files = sorted(after - before)
        if outcome != "ran" and new_files:
            problems.append(f"files left by a {outcome} case: {where}: {new_files[:5]}")
        if _partial(after):
            problems.append(f"partial files after {where}: {_partial(after)[:5]}")
        if not comfy_server.answers():
            problems.append(f"server stopped answering after {where}")
            break
    elapsed = time.monotonic() - started
    report = {"cases": len(cases), "skipped_over_budget": skipped, "seconds": round(elapsed, 1),
              "counts": dict(counts), "problems": problems, "outcomes": outcomes}
    print(f"\n[fuzz {server_id}] {len(cases)} cases in {elapsed:.0f} s: refused at validation {counts['refused']} "
          f"({counts['refused_in_pack_words']} in the pack's words), failed at run time with a "
          f"message {counts['failed']} ({counts['failed_in_pack_words']} in the pack's words), ran "
          f"{counts['ran']} ({counts['ran_outside_schema']} outside the schema); bare errors "
          f"{counts['bare_error']}, timed out {counts['timeout']}, skipped over budget {skipped}")
    if os.environ.get("CVD_FUZZ_REPORT"):
        _write_report(server_id, report)
    if skipped:
        warnings.warn(f"fuzz: {skipped} cases skipped after the {BUDGET_S:.0f} s budget (machine loaded?)")
    assert not problems, f"{len(problems)} fuzz problems:\n" + "\n".join(problems[:40])
    assert counts["refused"] > counts["failed"] + counts["ran"], counts  # most hostile values stop at validation
