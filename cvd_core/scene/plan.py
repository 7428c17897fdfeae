"""The scene plan: a versioned JSON description of a scene, its entities and their trajectories.

A plan is a plain JSON-serialisable ``dict`` (so it can travel through ComfyUI links, be shown in the
UI and be edited by hand). Version 1::

    {
      "version": 1,
      "prompt": "a red car drives past a tree in a park",   # full text (a good global prompt)
      "scene": "a park",                                      # background / setting prompt
      "frames": 16,
      "entities": [
        {
          "id": "car",                      # unique, letters/digits/_/-
          "prompt": "a red car",            # regional prompt of this entity
          "kind": "vehicle",                # free category (person, animal, vehicle, plant, object, ...)
          "motion": "drives past",          # motion prompt ("" = none)
          "size": [0.16, 0.13, 0.40],       # 3D box [width, height, depth] in scene units (optional
                                            #   with trajectory_2d: lifting derives it from "scale")
          "trajectory_2d": {                # C3V answer format, on a reference image of image_size
            "image_size": [512, 512],       # [W, H] pixels
            "scale": 0.33,                  # box height / image height
            "start": [380, 450],            # box centre at the first frame, pixels
            "end": [704, 652],              # box centre at the last frame
            "path": [[400, 470], ...],      # intermediate waypoints (may be empty)
            "points": [[x, y], ...]         # WRITTEN BY THE VALIDATOR: one box centre per frame
          },
          "trajectory_3d": [[x, y, z], ...],  # box centre per frame, reference-camera coordinates
          "facing": "next_point"            # or a yaw angle in degrees
        }
      ]
    }

Coordinates: the world frame is the camera of frame 0, which every CVD view shares (each view's
trajectory is relative to its own frame 0 = identity), in OpenCV axes: x right, y DOWN, z forward.
"Up" is therefore -y. Yaw turns about the vertical axis: 0 deg faces +z (away from the camera), 90 deg
faces +x (to the right). Scene units are those of the camera rig (for the CVD presets the cameras
look at the point 1 unit ahead).

An entity needs ``trajectory_2d`` or ``trajectory_3d`` (or both: then ``trajectory_3d`` is what is
projected and ``trajectory_2d`` is kept as its source). 2D paths become ``points``: the polyline
start -> path -> end resampled to ``frames`` points equally spaced along its length. A 3D trajectory
with exactly ``frames`` points is kept as given (per-frame positions, any speed profile); any other
length is resampled the same way. One point means a static entity.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["PLAN_VERSION", "ScenePlanError", "validate_plan", "resample_polyline", "plan_to_json"]

PLAN_VERSION = 1

_ROOT_KEYS = {"version", "prompt", "scene", "frames", "entities"}
_ENTITY_KEYS = {"id", "prompt", "kind", "motion", "size", "trajectory_2d", "trajectory_3d", "facing"}
_TRAJ2D_KEYS = {"image_size", "scale", "start", "end", "path", "points"}
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


class ScenePlanError(ValueError):
    """A scene plan (or an LLM answer meant to fill one) that cannot be used.

    ``problems`` lists every problem found, each prefixed with its JSON path
    (``entities[1].trajectory_2d.start: expected [x, y], got "left"``).
    """

    def __init__(self, problems: Sequence[str], header: str = "invalid scene plan"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):\n"
                         f"{lines}")


# ------------------------------------------------------------------------------------------ helpers
def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    """A compact repr for error messages (long values are cut so messages stay readable)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Report:
    """Collects problems and warnings so that the validator reports everything at once."""

    def __init__(self) -> None:
        self.problems: List[str] = []
        self.warnings: List[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")


def _read_vector(report: _Report, path: str, value: Any, length: int, what: str) -> Optional[List[float]]:
    """A list of ``length`` finite numbers, or None after reporting why not."""
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(_is_number(v) for v in value):
        report.error(path, f"expected {what}, got {_short(value)}")
        return None
    out = [float(v) for v in value]
    if not all(math.isfinite(v) for v in out):
        report.error(path, f"expected finite numbers in {what}, got {_short(value)}")
        return None
    return out


def _read_text(report: _Report, path: str, value: Any, required: bool, default: str = "") -> str:
    if value is None:
        if required:
            report.error(path, "missing (expected a non-empty string)")
        return default
    if not isinstance(value, str):
        report.error(path, f"expected a string, got {_short(value)}")
        return default
    if required and not value.strip():
        report.error(path, "must not be empty")
    return value.strip()


def _warn_unknown_keys(report: _Report, path: str, obj: Dict[str, Any], known: set) -> None:
    for key in obj:
        if key not in known:
            report.warn(f"{path}.{key}" if path else str(key),
                        f"unknown key (ignored); known keys: {', '.join(sorted(known))}")


def resample_polyline(points: Sequence[Sequence[float]], count: int) -> np.ndarray:
    """``count`` points equally spaced along the polyline through ``points`` (first and last kept).

    Zero-length segments are harmless; a polyline of zero length (or a single point) gives ``count``
    copies of its first point. Works for any dimension.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or len(pts) == 0:
        raise ValueError(f"resample_polyline needs a non-empty [N, D] list of points, got shape {pts.shape}")
    if count < 1:
        raise ValueError(f"resample_polyline needs count >= 1, got {count}")
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    total = float(seg.sum())
    if len(pts) == 1 or total <= 1e-12:
        return np.repeat(pts[:1], count, axis=0)
    if count == 1:
        return pts[:1].copy()
    cumulative = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, total, count)
    # interpolate each coordinate against arc length; duplicate arc values (zero-length segments)
    # are fine for np.interp since the coordinates there are equal too.
    out = np.stack([np.interp(targets, cumulative, pts[:, d]) for d in range(pts.shape[1])], axis=1)
    out[0], out[-1] = pts[0], pts[-1]
    return out


# ------------------------------------------------------------------------------------------ parts
def _validate_trajectory_2d(report: _Report, path: str, value: Any, frames: Optional[int]) -> Optional[dict]:
    if not isinstance(value, dict):
        report.error(path, f"expected an object with image_size, scale, start, end, path; got {_short(value)}")
        return None
    _warn_unknown_keys(report, path, value, _TRAJ2D_KEYS)
    ok = True
    size = value.get("image_size")
    image_size = None
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_number(v) for v in size)
            or not all(float(v).is_integer() and v >= 1 for v in size)):
        report.error(f"{path}.image_size", f"expected [width, height] in whole pixels >= 1, got {_short(size)}")
        ok = False
    else:
        image_size = [int(size[0]), int(size[1])]

    scale = value.get("scale")
    if not _is_number(scale) or not math.isfinite(float(scale)) or float(scale) <= 0:
        report.error(f"{path}.scale", f"expected a number in (0, 1] (box height / image height), got {_short(scale)}")
        ok = False
    else:
        scale = float(scale)
        if scale > 1.0:
            report.warn(f"{path}.scale", f"{scale:g} is larger than the image; clamped to 1")
            scale = 1.0

    start = _read_vector(report, f"{path}.start", value.get("start"), 2, "[x, y]")
    end = _read_vector(report, f"{path}.end", value.get("end"), 2, "[x, y]")
    waypoints: List[List[float]] = []
    raw_path = value.get("path", [])
    if not isinstance(raw_path, (list, tuple)):
        report.error(f"{path}.path", f"expected a list of [x, y] points, got {_short(raw_path)}")
        ok = False
    else:
        for i, point in enumerate(raw_path):
            vec = _read_vector(report, f"{path}.path[{i}]", point, 2, "[x, y]")
            ok = ok and vec is not None
            if vec is not None:
                waypoints.append(vec)
    if not ok or start is None or end is None or image_size is None:
        return None

    width, height = image_size

    def clamp(point: List[float], where: str) -> List[float]:
        x = min(max(point[0], 0.0), float(width))
        y = min(max(point[1], 0.0), float(height))
        if (x, y) != (point[0], point[1]):
            report.warn(where, f"({point[0]:g}, {point[1]:g}) lies outside the {width}x{height} image; "
                               f"clamped to ({x:g}, {y:g})")
        return [x, y]

    start = clamp(start, f"{path}.start")
    end = clamp(end, f"{path}.end")
    waypoints = [clamp(p, f"{path}.path[{i}]") for i, p in enumerate(waypoints)]
    out = {"image_size": image_size, "scale": scale, "start": start, "end": end, "path": waypoints}
    if frames is not None:
        out["points"] = resample_polyline([start] + waypoints + [end], frames).tolist()
    return out


def _validate_trajectory_3d(report: _Report, path: str, value: Any, frames: Optional[int]) -> Optional[list]:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        report.error(path, f"expected a non-empty list of [x, y, z] points, got {_short(value)}")
        return None
    points = [_read_vector(report, f"{path}[{i}]", p, 3, "[x, y, z]") for i, p in enumerate(value)]
    if any(p is None for p in points):
        return None
    if frames is None or len(points) == frames:
        return points
    return resample_polyline(points, frames).tolist()


def _validate_entity(report: _Report, path: str, value: Any, frames: Optional[int]) -> Optional[dict]:
    if not isinstance(value, dict):
        report.error(path, f"expected an entity object, got {_short(value)}")
        return None
    _warn_unknown_keys(report, path, value, _ENTITY_KEYS)
    start_count = len(report.problems)
    entity: Dict[str, Any] = {}
    entity_id = value.get("id")
    if not isinstance(entity_id, str) or not _ID_PATTERN.match(entity_id):
        report.error(f"{path}.id", f"expected a non-empty id of letters, digits, '_' or '-', got {_short(entity_id)}")
    entity["id"] = entity_id
    entity["prompt"] = _read_text(report, f"{path}.prompt", value.get("prompt"), required=True)
    entity["kind"] = _read_text(report, f"{path}.kind", value.get("kind"), required=False, default="object") or "object"
    entity["motion"] = _read_text(report, f"{path}.motion", value.get("motion"), required=False)

    if value.get("size") is not None:
        size = _read_vector(report, f"{path}.size", value.get("size"), 3, "[width, height, depth]")
        if size is not None and min(size) <= 0:
            report.error(f"{path}.size", f"every box dimension must be > 0, got {_short(value.get('size'))}")
        entity["size"] = size

    has_2d = value.get("trajectory_2d") is not None
    has_3d = value.get("trajectory_3d") is not None
    if not has_2d and not has_3d:
        report.error(path, "needs a trajectory: give trajectory_2d (C3V: scale, start, end, path on a reference "
                           "image) or trajectory_3d (a list of [x, y, z])")
    if has_2d:
        entity["trajectory_2d"] = _validate_trajectory_2d(report, f"{path}.trajectory_2d",
                                                          value["trajectory_2d"], frames)
    if has_3d:
        entity["trajectory_3d"] = _validate_trajectory_3d(report, f"{path}.trajectory_3d",
                                                          value["trajectory_3d"], frames)

    facing = value.get("facing", "next_point")
    if isinstance(facing, str) and facing.strip().lower().replace(" ", "_") in ("next_point", "nextpoint"):
        facing = "next_point"
    elif _is_number(facing) and math.isfinite(float(facing)):
        facing = float(facing)
    else:
        report.error(f"{path}.facing", f"expected \"next_point\" or a yaw angle in degrees, got {_short(facing)}")
    entity["facing"] = facing
    return entity if len(report.problems) == start_count else None


# ------------------------------------------------------------------------------------------ public
def validate_plan(obj: Any, frames: Optional[int] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Check and normalise a scene plan; return ``(plan, warnings)``.

    ``obj``: a plan dict or its JSON text. ``frames``: overrides the plan's frame count (e.g. to match
    a camera rig); paths are resampled to it. The result is a new dict (``obj`` is not modified) in
    canonical form: defaults filled in, 2D points clamped to the image (a warning each), per-frame
    ``trajectory_2d.points`` written, 3D trajectories of the wrong length resampled.
    Raises :class:`ScenePlanError` listing EVERY problem with its JSON path.
    """
    report = _Report()
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise ScenePlanError([f"(root): not valid JSON: {exc}"]) from None
    if not isinstance(obj, dict):
        raise ScenePlanError([f"(root): expected a JSON object with version, scene, frames, entities; "
                              f"got {_short(obj)}"])
    obj = copy.deepcopy(obj)
    _warn_unknown_keys(report, "", obj, _ROOT_KEYS)

    version = obj.get("version")
    if version is None:
        report.warn("version", f"missing; assuming {PLAN_VERSION}")
    elif not _is_number(version) or float(version) != PLAN_VERSION:
        report.error("version", f"unsupported plan version {_short(version)}; this build reads version {PLAN_VERSION}")

    if frames is not None:
        if isinstance(frames, bool) or not isinstance(frames, numbers.Integral) or frames < 1:
            raise ScenePlanError([f"frames (override): expected an integer >= 1, got {_short(frames)}"])
        frames = int(frames)
    else:
        raw = obj.get("frames")
        if raw is None:
            report.error("frames", "missing (expected an integer >= 1, the number of video frames)")
        elif (not _is_number(raw)) or not float(raw).is_integer() or raw < 1:
            report.error("frames", f"expected an integer >= 1, got {_short(raw)}")
        else:
            frames = int(raw)

    plan: Dict[str, Any] = {
        "version": PLAN_VERSION,
        "prompt": _read_text(report, "prompt", obj.get("prompt"), required=False),
        "scene": _read_text(report, "scene", obj.get("scene"), required=False),
        "frames": frames,
        "entities": [],
    }
    entities = obj.get("entities")
    if entities is None:
        report.error("entities", "missing (expected a list of entity objects; [] for a scene without entities)")
        entities = []
    elif not isinstance(entities, list):
        report.error("entities", f"expected a list of entity objects, got {_short(entities)}")
        entities = []
    if isinstance(obj.get("entities"), list) and not entities:
        report.warn("entities", "empty: the plan has no entities to place")

    seen: Dict[str, int] = {}
    for i, raw_entity in enumerate(entities):
        entity = _validate_entity(report, f"entities[{i}]", raw_entity, frames)
        raw_id = raw_entity.get("id") if isinstance(raw_entity, dict) else None
        if isinstance(raw_id, str) and raw_id:
            if raw_id in seen:
                report.error(f"entities[{i}].id", f"duplicate id {raw_id!r} (also entities[{seen[raw_id]}])")
            else:
                seen[raw_id] = i
        if entity is not None:
            plan["entities"].append(entity)

    if report.problems:
        raise ScenePlanError(report.problems)
    return plan, report.warnings


def plan_to_json(plan: Dict[str, Any], indent: Optional[int] = 2) -> str:
    """The plan as JSON text (what the ComfyUI node shows and what :func:`validate_plan` reads back)."""
    return json.dumps(plan, indent=indent)
