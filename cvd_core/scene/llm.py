"""The LLM path of the scene director: C3V-style step-by-step prompt templates, and a robust parser
of the answers.

C3V (Zhu et al. 2024, §4.2) asks a multi-modal LLM, on a render of the scene, for each object's 2D
bounding-box scale first, then its start point, then its end point, then intermediate path points,
because asking for the whole trajectory at once gives implausible paths. The node pack cannot call a
model itself (no network, any LLM node will do), so it hands out the prompt as text and reads the
answer back. The answer format::

    car: Scale: 0.33, Start: (380,450), End: (704,652), Trajectory: (400,470), (450,500)
    tree: Scale: 0.5, Start: (256,300), End: (256,300), Trajectory: none

The parser accepts any case and spacing, ``()``/``[]``/``{}`` or bare pairs, markdown emphasis,
one field per line, per-entity sections introduced by the entity id or its noun ("car:", "**Car**",
"1. a red car"), percentages for the scale, normalised 0..1 coordinates (scaled, with a warning)
and JSON answers (``{"car": {"scale": .., "start": [..], "end": [..], "trajectory": [[..]]}}``, a list
of such objects with an ``id``, or a whole plan). What it cannot read raises
:class:`~cvd_core.scene.plan.ScenePlanError` quoting the part it could not read.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .plan import ScenePlanError, validate_plan

__all__ = ["c3v_prompt_templates", "parse_llm_answer"]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_POINT = re.compile(
    rf"[\(\[\{{]\s*(?:x\s*[:=]\s*)?(?P<x>{_NUM})\s*[,;\s]\s*(?:y\s*[:=]\s*)?(?P<y>{_NUM})\s*[\)\]\}}]"
    rf"|(?<![\w.])(?P<bx>{_NUM})\s*,\s*(?P<by>{_NUM})(?![\w.])", re.IGNORECASE)
_DECOR = r"[\*_`\s]*"  # markdown emphasis and spaces around field names
_FIELDS = {
    "scale": re.compile(rf"\b(?:bbox\s+|box\s+|bounding[\s-]box\s+)?scale\b{_DECOR}[:=]?{_DECOR}", re.IGNORECASE),
    "start": re.compile(rf"\bstart(?:ing)?(?:\s*(?:point|position))?\b{_DECOR}[:=]?{_DECOR}", re.IGNORECASE),
    "end": re.compile(rf"\bend(?:ing)?(?:\s*(?:point|position))?\b{_DECOR}[:=]?{_DECOR}", re.IGNORECASE),
    "trajectory": re.compile(rf"\b(?:trajectory|path|waypoints|intermediate\s+points|points)\b(?:\s*points)?"
                             rf"{_DECOR}[:=]?{_DECOR}", re.IGNORECASE),
}
_EMPTY_LIST = re.compile(r"^[\s\[\(\{]*(none|empty|n/?a|-+|nothing|no\s+\w+|\]|\)|\})?[\s\]\)\}\.,]*$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------ templates
def _entity_lines(plan: Dict[str, Any]) -> List[str]:
    lines = []
    for i, entity in enumerate(plan["entities"], start=1):
        motion = f"motion: {entity['motion']}" if entity.get("motion") else "does not move"
        lines.append(f"{i}. {entity['id']}: \"{entity['prompt']}\" ({entity.get('kind', 'object')}, {motion})")
    return lines


def c3v_prompt_templates(plan_or_prompt: Any, image_size: Sequence[int] = (512, 512), path_points: int = 4,
                         frames: int = 16) -> str:
    """The director prompt (one string) for any LLM: C3V's step-by-step questions (scale, then start,
    then end, then ``path_points`` intermediate points) for every entity of the plan, on a reference
    image of ``image_size`` = (W, H), and the exact answer format :func:`parse_llm_answer` reads.
    ``plan_or_prompt``: a scene plan, or a prompt text (split with the rule-based splitter).
    """
    from .decompose import decompose_prompt  # local import: decompose is heavier and imports plan too

    if isinstance(plan_or_prompt, str) and not plan_or_prompt.lstrip().startswith("{"):
        plan = decompose_prompt(plan_or_prompt, frames=frames)
    else:
        plan, _ = validate_plan(plan_or_prompt)
    width, height = int(image_size[0]), int(image_size[1])
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    if not plan["entities"]:
        raise ScenePlanError(["entities: the plan has no entities; nothing to place"],
                             header="cannot write the director prompt")
    # example numbers inside this image, so the format example never teaches out-of-range values
    ex = lambda fx, fy: f"({round(width * fx)},{round(height * fy)})"  # noqa: E731
    example_path = ", ".join(ex(0.3 + 0.1 * k, 0.72 + 0.01 * k) for k in range(max(path_points, 1)))
    answer_lines = [f"{e['id']}: Scale: <s>, Start: (<x>,<y>), End: (<x>,<y>), Trajectory: "
                    + ", ".join("(<x>,<y>)" for _ in range(max(path_points, 1))) for e in plan["entities"]]
    scene = plan["scene"] or plan["prompt"] or "(unspecified)"
    return "\n".join([
        "You are the director of a short video. Place every entity of the scene on a reference image, "
        "step by step.",
        f"Scene: {scene}",
        f"Full description: {plan['prompt'] or scene}",
        f"Reference image: {width}x{height} pixels; x grows to the right (0 to {width}), y grows downwards "
        f"(0 to {height}); the camera looks straight ahead at the scene.",
        "",
        "Entities:",
        *_entity_lines(plan),
        "",
        "For each entity, answer these steps in order, each using the previous answers:",
        "Step 1 - Scale: the height of the entity's bounding box divided by the image height, a number "
        "between 0 and 1. Keep sizes plausible with respect to each other and to the scene (nearer is larger).",
        "Step 2 - Start: the pixel (x,y) of the centre of the bounding box in the first frame. Entities that "
        "stand on the ground should have the bottom of their box on the ground.",
        "Step 3 - End: the pixel (x,y) of the box centre in the last frame; the same as Start if the "
        "entity does not move.",
        f"Step 4 - Trajectory: {path_points} intermediate points (x,y) of the box centre between Start and "
        "End, in order, following the motion (write 'none' for an entity that does not move).",
        "",
        "Answer with exactly one line per entity in this format and nothing else:",
        *answer_lines,
        f"Example: car: Scale: 0.25, Start: {ex(0.2, 0.7)}, End: {ex(0.8, 0.75)}, Trajectory: {example_path}",
    ])


# ------------------------------------------------------------------------------------------ parsing
def _quote(text: str, start: int = 0, length: int = 70) -> str:
    snippet = " ".join(text[start:start + length].split())
    return f"'{snippet}{'...' if len(text) > start + length else ''}'"


def _entity_names(entity: Dict[str, Any]) -> List[str]:
    """Ways an answer may name an entity: its id, its prompt, the prompt's last word (head noun)."""
    names = [entity["id"], entity["id"].replace("_", " "), entity["prompt"]]
    words = re.findall(r"[A-Za-z][A-Za-z'\-]*", entity["prompt"])
    if words:
        names.append(words[-1])
    return [n for n in names if n]


def _find_entity_mention(header: str, entities: List[Dict[str, Any]]) -> Optional[int]:
    """Index of the entity named last in ``header`` (closest to the fields that follow it)."""
    best, best_key = None, (-1, -1)
    for index, entity in enumerate(entities):
        for name in _entity_names(entity):
            for match in re.finditer(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", header, re.IGNORECASE):
                # the mention that ends latest wins; on a tie the longer (more specific) name
                key = (match.end(), len(name))
                if key > best_key:
                    best, best_key = index, key
    return best


def _parse_point(text: str) -> Optional[List[float]]:
    match = _POINT.match(text.lstrip())
    if match is None:
        return None
    x = match.group("x") if match.group("x") is not None else match.group("bx")
    y = match.group("y") if match.group("y") is not None else match.group("by")
    return [float(x), float(y)]


def _field_spans(segment: str) -> Dict[str, Tuple[int, int]]:
    """(start of value, end of value) of each field keyword's value in ``segment``."""
    found = []
    for name, pattern in _FIELDS.items():
        match = pattern.search(segment)
        if match is not None:
            found.append((match.start(), match.end(), name))
    found.sort()
    spans = {}
    for k, (_, value_start, name) in enumerate(found):
        value_end = found[k + 1][0] if k + 1 < len(found) else len(segment)
        spans[name] = (value_start, value_end)
    return spans


def _parse_record(segment: str, label: str, problems: List[str], notes: List[str]) -> Optional[dict]:
    """Scale/start/end/trajectory of one entity's section of the answer."""
    spans = _field_spans(segment)
    record: Dict[str, Any] = {}
    start_count = len(problems)
    s0, s1 = spans["scale"]
    match = re.match(rf"\s*(?P<num>{_NUM})\s*(?P<pct>%)?", segment[s0:s1])
    if match is None:
        problems.append(f"{label}: cannot read the Scale from {_quote(segment, max(s0 - 7, 0), 40)}")
    else:
        record["scale"] = float(match.group("num")) / (100.0 if match.group("pct") else 1.0)
    for name in ("start", "end"):
        if name not in spans:
            continue
        v0, v1 = spans[name]
        point = _parse_point(segment[v0:v1])
        if point is None:
            problems.append(f"{label}: cannot read {name.capitalize()} as a point (x,y) from "
                            f"{_quote(segment, max(v0 - len(name) - 2, 0), 40)}")
        else:
            record[name] = point
    if "start" not in spans:
        problems.append(f"{label}: no Start point in {_quote(segment, 0, 80)}")
    if "end" not in spans and "start" in record:
        notes.append(f"{label}: no End point; the entity stays at its Start")
        record["end"] = list(record["start"])
    path: List[List[float]] = []
    if "trajectory" in spans:
        t0, t1 = spans["trajectory"]
        value = segment[t0:t1]
        points = list(_POINT.finditer(value))
        for m in points:
            path.append(_parse_point(m.group(0)))
        leftover = _POINT.sub(" ", value)
        # separators, numbering and words such as "and" are fine; a bracket holding a number that is
        # not a point, or digits with no point at all, is a point we could not read
        broken = re.search(r"[\(\[\{][^\)\]\}\n]*\d[^\)\]\}\n]*[\)\]\}]?", leftover)
        if broken is not None or (re.search(r"\d", leftover) and not points):
            bad = broken.group(0) if broken is not None else value
            problems.append(f"{label}: cannot read the Trajectory point {_quote(bad.strip(), 0, 50)} "
                            f"in {_quote(value.strip(), 0, 80)}")
        elif not points and not _EMPTY_LIST.match(leftover.split("\n")[0]):
            problems.append(f"{label}: cannot read the Trajectory points from {_quote(value, 0, 50)}")
    record["path"] = path
    return record if len(problems) == start_count else None


def _parse_text_answer(text: str, entities: List[Dict[str, Any]], problems: List[str],
                       notes: List[str]) -> Dict[str, dict]:
    """Records per entity id from the "Scale: ..., Start: ..." text format."""
    starts = [m.start() for m in _FIELDS["scale"].finditer(text)]
    if not starts:
        problems.append(f"no 'Scale:' field found; expected lines like 'car: Scale: 0.33, Start: (380,450), "
                        f"End: (704,652), Trajectory: (400,470), ...' but got {_quote(text, 0, 120)}")
        return {}
    # a section runs from its Scale to the line holding the next section's header
    bounds = []
    for k, start in enumerate(starts):
        end = len(text)
        if k + 1 < len(starts):
            nxt = starts[k + 1]
            line_start = text.rfind("\n", start, nxt)
            end = line_start if line_start > start else nxt
        bounds.append((start, end))
    records: Dict[str, dict] = {}
    unassigned = []
    previous_end = 0
    for k, (start, end) in enumerate(bounds):
        header = text[previous_end:start]
        index = _find_entity_mention(header, entities)
        label = f"section {k + 1}" + (f" ({entities[index]['id']})" if index is not None else "")
        record = _parse_record(text[start:end], label, problems, notes)
        previous_end = end
        if record is None:
            continue
        if index is None:
            unassigned.append((k, header, record))
        elif entities[index]["id"] in records:
            problems.append(f"{label}: entity {entities[index]['id']!r} is answered twice")
        else:
            records[entities[index]["id"]] = record
    free = [e["id"] for e in entities if e["id"] not in records]
    if unassigned and len(bounds) == len(entities) and len(unassigned) == len(free):
        for (_, _, record), entity_id in zip(unassigned, free):  # unnamed sections, one per entity, in order
            records[entity_id] = record
    else:
        for k, header, _ in unassigned:
            problems.append(f"section {k + 1}: cannot tell which entity it describes (known: "
                            f"{', '.join(e['id'] for e in entities)}); header was {_quote(header.strip()[-60:])}")
    return records


def _json_candidates(text: str) -> List[str]:
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    candidates = [f.strip() for f in fenced]
    for opener in "{[":
        first = text.find(opener)
        last = text.rfind("}" if opener == "{" else "]")
        if first != -1 and last > first:
            candidates.append(text[first:last + 1])
    return candidates


def _json_record(value: Any, label: str, problems: List[str], notes: List[str]) -> Optional[dict]:
    if not isinstance(value, dict):
        problems.append(f"{label}: expected an object with scale, start, end, trajectory; "
                        f"got {_quote(json.dumps(value))}")
        return None
    lower = {str(k).lower(): v for k, v in value.items()}
    if isinstance(lower.get("trajectory_2d"), dict):
        lower = {**lower, **{str(k).lower(): v for k, v in lower["trajectory_2d"].items()}}
    record: Dict[str, Any] = {}
    scale = lower.get("scale")
    if isinstance(scale, str):
        match = re.fullmatch(rf"\s*({_NUM})\s*(%?)\s*", scale)
        scale = float(match.group(1)) / (100.0 if match.group(2) else 1.0) if match else None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        problems.append(f"{label}.scale: expected a number, got {_quote(json.dumps(lower.get('scale')))}")
    else:
        record["scale"] = float(scale)

    def point(v: Any, where: str) -> Optional[List[float]]:
        if isinstance(v, dict):
            v = [v.get("x"), v.get("y")]
        if isinstance(v, str):
            return _parse_point(v if v.strip()[:1] in "([{" else f"({v})")
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in v):
            return [float(v[0]), float(v[1])]
        return None

    for name in ("start", "end"):
        if lower.get(name) is None:
            if name == "start":
                problems.append(f"{label}.start: missing")
            continue
        p = point(lower[name], name)
        if p is None:
            problems.append(f"{label}.{name}: expected [x, y], got {_quote(json.dumps(lower[name]))}")
        else:
            record[name] = p
    if "end" not in record and "start" in record and lower.get("end") is None:
        notes.append(f"{label}: no end point; the entity stays at its start")
        record["end"] = list(record["start"])
    raw_path = next((lower[k] for k in ("trajectory", "path", "points", "waypoints") if k in lower), [])
    path = []
    if raw_path in (None, "none", ""):
        raw_path = []
    if not isinstance(raw_path, list):
        problems.append(f"{label}.trajectory: expected a list of [x, y], got {_quote(json.dumps(raw_path))}")
    else:
        for i, item in enumerate(raw_path):
            p = point(item, "trajectory")
            if p is None:
                problems.append(f"{label}.trajectory[{i}]: expected [x, y], got {_quote(json.dumps(item))}")
            else:
                path.append(p)
    record["path"] = path
    return record if {"scale", "start", "end"} <= record.keys() else None


def _parse_json_answer(data: Any, plan: Dict[str, Any], problems: List[str], notes: List[str]):
    """Records per entity id from a JSON answer, or a whole plan (returned as ("plan", plan))."""
    if isinstance(data, dict) and isinstance(data.get("entities"), list) and (
            "version" in data or "frames" in data or any(
                isinstance(e, dict) and ("trajectory_2d" in e or "trajectory_3d" in e) and "prompt" in e
                for e in data["entities"])):
        return "plan", data
    if isinstance(data, dict) and isinstance(data.get("entities"), list):
        data = data["entities"]
    ids = {e["id"] for e in plan["entities"]}
    items: List[Tuple[Optional[str], Any, str]] = []
    if isinstance(data, list):
        for i, item in enumerate(data):
            name = None
            if isinstance(item, dict):
                name = next((item[k] for k in ("id", "name", "entity", "object") if isinstance(item.get(k), str)), None)
            items.append((name, item, f"[{i}]"))
    elif isinstance(data, dict):
        items = [(str(k), v, str(k)) for k, v in data.items()]
    else:
        problems.append(f"expected a JSON object or list of entity answers, got {_quote(json.dumps(data))}")
        return "records", {}
    records = {}
    for position, (name, item, label) in enumerate(items):
        index = _find_entity_mention(name, plan["entities"]) if name else None
        if index is None and name is None and len(items) == len(ids):
            index = position  # unnamed answers, one per entity, in order
        if index is None:
            notes.append(f"{label}: answer for unknown entity {name!r} ignored (known: {', '.join(sorted(ids))})")
            continue
        record = _json_record(item, label, problems, notes)
        if record is not None:
            records[plan["entities"][index]["id"]] = record
    return "records", records


def _rescale_normalised(record: dict, image_size: Sequence[int], label: str, notes: List[str]) -> None:
    coords = [c for p in [record["start"], record["end"], *record["path"]] for c in p]
    if image_size[0] > 2 and image_size[1] > 2 and all(0.0 <= c <= 1.0 for c in coords) and any(c > 0 for c in coords):
        for p in [record["start"], record["end"], *record["path"]]:
            p[0] *= image_size[0]
            p[1] *= image_size[1]
        notes.append(f"{label}: coordinates look normalised (all within 0..1); scaled to the "
                     f"{image_size[0]}x{image_size[1]} image")


def parse_llm_answer(text: str, plan: Any, image_size: Sequence[int], *,
                     warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """Fill ``plan``'s entities with the 2D trajectories of an LLM answer; return the validated plan.

    ``text``: the LLM's answer (text format of :func:`c3v_prompt_templates`, or JSON). ``plan``: the
    plan the prompt was written for (a dict/JSON, or a prompt text to split by rules).
    ``image_size``: (W, H) of the reference image the LLM placed things on. Answered entities get a
    ``trajectory_2d`` (their stale ``trajectory_3d`` is dropped: lift again); unanswered ones keep
    their trajectory (a warning). ``warnings`` (a list) receives notes (missing End, normalised
    coordinates, clamped points). Raises :class:`ScenePlanError` quoting what could not be read.
    """
    from .decompose import decompose_prompt

    if isinstance(plan, str) and not plan.lstrip().startswith("{"):
        plan = decompose_prompt(plan)
    else:
        plan, _ = validate_plan(plan)
    notes = warnings if warnings is not None else []
    header = "cannot parse the LLM answer"
    if not isinstance(text, str) or not text.strip():
        raise ScenePlanError(["the answer is empty"], header=header)
    width, height = int(image_size[0]), int(image_size[1])
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")

    problems: List[str] = []
    records: Dict[str, dict] = {}
    parsed_json = False
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        kind, result = _parse_json_answer(data, plan, problems, notes)
        if kind == "plan":
            full, more = validate_plan(result, frames=plan["frames"])
            notes.extend(more)
            return full
        records, parsed_json = result, True
        break
    if not parsed_json:
        records = _parse_text_answer(text, plan["entities"], problems, notes)
    if problems:
        raise ScenePlanError(problems, header=header)
    if not records:
        raise ScenePlanError([f"no entity of the plan ({', '.join(e['id'] for e in plan['entities'])}) is "
                              f"answered in {_quote(text, 0, 120)}"], header=header)

    updated = copy.deepcopy(plan)
    for entity in updated["entities"]:
        record = records.get(entity["id"])
        if record is None:
            notes.append(f"{entity['id']}: not in the answer; keeps its previous trajectory")
            continue
        _rescale_normalised(record, (width, height), entity["id"], notes)
        entity["trajectory_2d"] = {"image_size": [width, height], "scale": record["scale"],
                                   "start": record["start"], "end": record["end"], "path": record["path"]}
        entity.pop("trajectory_3d", None)
    result, more = validate_plan(updated)
    notes.extend(more)
    return result
