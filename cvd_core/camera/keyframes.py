"""Keyframed camera rigs: the ``cvd_keyframes/1`` form of ``custom_json`` and its expansion to frames.

This is the one Python home of the interpolation maths; ``web/lib/keyframes.js`` is its JavaScript twin
(the camera path editor draws with it) and the browser test checks that both give the same rig.

A keyframe is a camera ``position`` and a look-at ``target`` in world coordinates (OpenCV axes: x right,
y down, z forward), an optional ``roll_deg`` about the optical axis and an optional ``fov_deg``, at a
time ``t`` in [0, 1] of the clip (frame ``f`` of ``F`` is at ``t = f / (F - 1)``). Each view's first
keyframe is at ``t = 0`` and its last at ``t = 1``, so the rig fits any frame count.

Interpolation between keyframes ``i`` and ``i + 1`` (``h = t[i+1] - t[i]``, ``u = (t - t[i]) / h``):

- position: cubic Hermite with Catmull-Rom tangents in time, ``m[i] = (p[i+1] - p[i-1]) / (t[i+1] -
  t[i-1])`` (one-sided differences at the two ends). The path passes through every keyframe, its
  velocity is continuous, and two keyframes give a straight line at constant speed (so CVD's linear
  presets convert exactly). Keyframe times are strictly increasing, so no division can be by zero.
- orientation: quaternion slerp (shortest arc) from keyframe ``i``'s rotation to keyframe ``i + 1``'s at
  the same ``u`` (a constant angular speed per segment, CVD's own ``interpolate_pose`` for two keys).
- ``fov_deg`` (when the keyframes give it): linear in ``u``.

Camera orientation at a keyframe: ``z = normalise(target - position)``, ``x = normalise(down x z)`` with
``down = (0, 1, 0)``, ``y = z x x``, then rolled by ``roll_deg`` (positive turns the camera's x axis
towards its y axis: clockwise as seen from behind the camera). A camera at the origin looking at
``(0, 0, 1)`` with no roll is exactly the identity. Looking straight up or down has no defined roll
and is refused.

CVD's convention: every view starts at the same pose. With ``shared_first_frame`` (the default) the
first keyframe of every view must equal view 0's; the rig is then expressed relative to that pose
(frame 0 is exactly the identity in every view). Unlocked, poses are relative to view 0's first pose.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .geometry import intrinsics_from_fov, inverse_affine, relative_to_first
from .presets import PRESETS, cvd_intrinsics, make_preset_rig, rig_from_json
from .rig import CameraError, CameraSet

__all__ = ["KEYFRAMES_FORMAT", "parse_keyframes", "expand_keyframes", "keyframe_rotation", "rig_from_keyframes",
           "rig_from_custom_json", "is_keyframes_form", "keyframes_from_rig", "keyframes_from_settings"]

KEYFRAMES_FORMAT = "cvd_keyframes/1"
MAX_VIEWS = 64
MAX_KEYFRAMES = 256
MAX_COORDINATE = 1e6
_DOWN = np.array([0.0, 1.0, 0.0])
_TOP_KEYS = {"format", "views", "shared_first_frame", "fov_deg"}
_VIEW_KEYS = {"label", "keyframes", "fov_deg"}
_KEY_KEYS = {"t", "position", "target", "roll_deg", "fov_deg"}
# Keyframes a preset becomes: two for the straight ones (exact), five along orbit's arc (close).
_PRESET_KEYS = {"orbit": 5}
_CUSTOM_KEYS = 5  # at most this many frames of a c2w rig become keyframes


# --------------------------------------------------------------------------------------- parsing
def _number(value: Any, where: str, low: Optional[float] = None, high: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CameraError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise CameraError(f"{where} must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CameraError(f"{where} must be between {low} and {high}, got {value}")
    return value


def _fov(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    fov = _number(value, where)
    if not 0.0 < fov < 180.0:
        raise CameraError(f"{where} must be in (0, 180) degrees, got {fov}")
    return fov


def _point(value: Any, where: str) -> List[float]:
    if not isinstance(value, list) or len(value) != 3:
        raise CameraError(f"{where} must be a list of 3 numbers [x, y, z], got {value!r}")
    # Bounded so that target - position and the spline's sums cannot overflow to inf (scene units ~ 1).
    return [_number(c, f"{where}[{i}]", -MAX_COORDINATE, MAX_COORDINATE) for i, c in enumerate(value)]


def _unknown(entry: dict, allowed: set, where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise CameraError(f"{where} has unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _parse_key(entry: Any, where: str) -> Dict[str, Any]:
    if not isinstance(entry, dict):
        raise CameraError(f"{where} must be an object with t, position and target, got {type(entry).__name__}")
    _unknown(entry, _KEY_KEYS, where)
    for key in ("t", "position", "target"):
        if key not in entry:
            raise CameraError(f"{where} needs '{key}'")
    key = {"t": _number(entry["t"], f"{where}.t", 0.0, 1.0), "position": _point(entry["position"], f"{where}.position"),
           "target": _point(entry["target"], f"{where}.target"),
           "roll_deg": _number(entry.get("roll_deg", 0.0), f"{where}.roll_deg", -360.0, 360.0)}
    if entry.get("fov_deg") is not None:
        key["fov_deg"] = _fov(entry["fov_deg"], f"{where}.fov_deg")
    keyframe_rotation(key, where)  # refuse a degenerate look-at here, with its place
    return key


def _parse_view(entry: Any, index: int) -> Dict[str, Any]:
    where = f"views[{index}]"
    if not isinstance(entry, dict):
        raise CameraError(f"{where} must be an object with 'keyframes', got {type(entry).__name__}")
    _unknown(entry, _VIEW_KEYS, where)
    keys = entry.get("keyframes")
    if not isinstance(keys, list) or not 2 <= len(keys) <= MAX_KEYFRAMES:
        raise CameraError(f"{where}.keyframes must be a list of 2 to {MAX_KEYFRAMES} keyframes, got "
                          f"{len(keys) if isinstance(keys, list) else type(keys).__name__}")
    parsed = [_parse_key(key, f"{where}.keyframes[{k}]") for k, key in enumerate(keys)]
    times = [key["t"] for key in parsed]
    if times[0] != 0.0 or times[-1] != 1.0:
        raise CameraError(f"{where}.keyframes must start at t = 0 and end at t = 1 (the first and last frame), "
                          f"got t = {times[0]} ... {times[-1]}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise CameraError(f"{where}.keyframes must have strictly increasing t, got {times}")
    with_fov = [("fov_deg" in key) for key in parsed]
    if any(with_fov) and not all(with_fov):
        raise CameraError(f"{where}.keyframes: give fov_deg on every keyframe of a view or on none")
    view = {"label": str(entry.get("label", f"view {index}")), "keyframes": parsed}
    if entry.get("fov_deg") is not None:
        view["fov_deg"] = _fov(entry["fov_deg"], f"{where}.fov_deg")
    return view


def _same_start(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("position", "target", "roll_deg"))  # the pose (fov may differ)


def parse_keyframes(data: Any) -> Dict[str, Any]:
    """Validate a ``cvd_keyframes/1`` document (already parsed JSON); returns it normalised (defaults
    filled in, numbers as floats). Every problem raises :class:`CameraError` naming the place and rule."""
    if not isinstance(data, dict):
        raise CameraError(f"camera keyframes must be a JSON object, got {type(data).__name__}")
    if data.get("format") != KEYFRAMES_FORMAT:
        raise CameraError(f"camera keyframes need \"format\": \"{KEYFRAMES_FORMAT}\", got {data.get('format')!r}")
    _unknown(data, _TOP_KEYS, "camera keyframes")
    views = data.get("views")
    if not isinstance(views, list) or not 1 <= len(views) <= MAX_VIEWS:
        raise CameraError(f"camera keyframes need a 'views' list of 1 to {MAX_VIEWS} views")
    shared = data.get("shared_first_frame", True)
    if not isinstance(shared, bool):
        raise CameraError(f"shared_first_frame must be true or false, got {shared!r}")
    doc = {"format": KEYFRAMES_FORMAT, "shared_first_frame": shared,
           "views": [_parse_view(view, i) for i, view in enumerate(views)]}
    if data.get("fov_deg") is not None:
        doc["fov_deg"] = _fov(data["fov_deg"], "fov_deg")
    if shared:
        first = doc["views"][0]["keyframes"][0]
        for i, view in enumerate(doc["views"][1:], start=1):
            if not _same_start(view["keyframes"][0], first):
                raise CameraError(f"views[{i}].keyframes[0] must equal views[0].keyframes[0] (CVD starts every view "
                                  f"at the same pose); set shared_first_frame to false to unlock frame 0")
    return doc


def is_keyframes_form(data: Any) -> bool:
    """Whether parsed ``custom_json`` is meant as keyframes (it names the format or has keyframed views)."""
    if not isinstance(data, dict):
        return False
    views = data.get("views")
    return "format" in data or (isinstance(views, list) and any(isinstance(v, dict) and "keyframes" in v
                                                                 for v in views))


# --------------------------------------------------------------------------------------- maths
def keyframe_rotation(key: Dict[str, Any], where: str = "keyframe") -> np.ndarray:
    """Camera-to-world rotation ``[3, 3]`` of a keyframe (look-at with y down, then roll)."""
    position = np.asarray(key["position"], dtype=np.float64)
    z = np.asarray(key["target"], dtype=np.float64) - position
    length = math.sqrt(float(z @ z))
    if length < 1e-9:
        raise CameraError(f"{where}: target must differ from position (the camera looks at itself)")
    z = z / length
    x = np.cross(_DOWN, z)
    x_length = math.sqrt(float(x @ x))
    if x_length < 1e-6:
        raise CameraError(f"{where}: the camera looks straight up or down (along the y axis), where roll is "
                          f"undefined; move the target sideways")
    x = x / x_length
    y = np.cross(z, x)
    roll = math.radians(key.get("roll_deg", 0.0))
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=1)


def _quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix (Shepperd's method; same branches as the JS)."""
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2.0
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2.0
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2.0
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2.0
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q / math.sqrt(float(q @ q))


def _slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Shortest-arc slerp of unit quaternions; the angle from atan2 (well conditioned near 0, unlike acos)."""
    if float(q0 @ q1) < 0.0:
        q1 = -q1
    half = math.atan2(math.sqrt(float((q1 - q0) @ (q1 - q0))), math.sqrt(float((q1 + q0) @ (q1 + q0))))
    angle = 2.0 * half  # the angle between q0 and q1 on the 4-D sphere
    if angle < 1e-9:
        q = q0 + u * (q1 - q0)
    else:
        q = (math.sin((1.0 - u) * angle) * q0 + math.sin(u * angle) * q1) / math.sin(angle)
    return q / math.sqrt(float(q @ q))


def _matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _tangents(times: Sequence[float], points: np.ndarray) -> np.ndarray:
    """Catmull-Rom tangents in time (dp/dt): central differences inside, one-sided at the ends."""
    n = len(times)
    tangents = np.empty_like(points)
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        tangents[i] = (points[b] - points[a]) / (times[b] - times[a])
    return tangents


def _segment(times: Sequence[float], s: float) -> int:
    """Index i of the segment [t[i], t[i+1]] holding s (the last segment holds t = 1)."""
    i = 0
    while i < len(times) - 2 and s >= times[i + 1]:
        i += 1
    return i


def expand_view(view: Dict[str, Any], frames: int, shared_fov: Optional[float] = None):
    """World c2w ``[F, 4, 4]`` and per-frame fov (None = CVD's K) of one parsed view."""
    keys = view["keyframes"]
    times = [key["t"] for key in keys]
    points = np.array([key["position"] for key in keys], dtype=np.float64)
    tangents = _tangents(times, points)
    quats = [_quaternion(keyframe_rotation(key)) for key in keys]
    c2w = np.repeat(np.eye(4)[None], frames, axis=0)
    fovs: List[Optional[float]] = []
    for f in range(frames):
        s = f / (frames - 1) if frames > 1 else 0.0
        i = _segment(times, s)
        h = times[i + 1] - times[i]
        u = (s - times[i]) / h
        u2, u3 = u * u, u * u * u
        c2w[f, :3, 3] = ((2 * u3 - 3 * u2 + 1) * points[i] + (u3 - 2 * u2 + u) * h * tangents[i]
                         + (-2 * u3 + 3 * u2) * points[i + 1] + (u3 - u2) * h * tangents[i + 1])
        c2w[f, :3, :3] = _matrix(_slerp(quats[i], quats[i + 1], u))
        if "fov_deg" in keys[0]:
            fovs.append(keys[i]["fov_deg"] + u * (keys[i + 1]["fov_deg"] - keys[i]["fov_deg"]))
        else:
            fovs.append(view.get("fov_deg", shared_fov))
    return c2w, fovs


def expand_keyframes(doc: Dict[str, Any], frames: int) -> np.ndarray:
    """World-space c2w ``[V, F, 4, 4]`` of a parsed document (before the rig's frame-0 reference)."""
    return np.stack([expand_view(view, frames, doc.get("fov_deg"))[0] for view in doc["views"]])


def rig_from_keyframes(data: Any, frames: int, width: int, height: int) -> CameraSet:
    """The ``[V, frames]`` rig of a ``cvd_keyframes/1`` document (parsed JSON)."""
    doc = parse_keyframes(data)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise CameraError(f"frames must be an integer >= 1, got {frames!r}")
    CameraSet(torch.eye(3)[None], torch.eye(4)[None], width, height)  # the size rule first
    expanded = [expand_view(view, frames, doc.get("fov_deg")) for view in doc["views"]]
    c2w = torch.as_tensor(np.stack([poses for poses, _ in expanded]))
    if doc["shared_first_frame"]:
        c2w = relative_to_first(c2w)  # every view from the same (now exact identity) pose
    else:
        c2w = inverse_affine(c2w[0, 0]) @ c2w
        c2w[0, 0] = torch.eye(4, dtype=c2w.dtype)
    default_K = cvd_intrinsics(width, height)
    K = torch.stack([torch.stack([default_K if fov is None else intrinsics_from_fov(fov, width, height)
                                  for fov in fovs]) for _, fovs in expanded])
    return CameraSet(K, c2w, width, height, tuple(view["label"] for view in doc["views"]))


def rig_from_custom_json(text: str, frames: int, width: int, height: int) -> CameraSet:
    """A rig from ``custom_json``: the keyframes form (expanded to ``frames``) or the per-frame c2w/w2c form."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CameraError(f"camera JSON is not valid JSON: {exc}") from None
    if is_keyframes_form(data):
        return rig_from_keyframes(data, frames, width, height)
    return rig_from_json(text, width, height)


# --------------------------------------------------------------------------------------- back to keyframes
def _key_from_pose(pose: np.ndarray, t: float, fov: Optional[float]) -> Dict[str, Any]:
    position = pose[:3, 3]
    rotation = pose[:3, :3]
    key = {"t": t, "position": position.tolist(), "target": (position + rotation[:, 2]).tolist(), "roll_deg": 0.0}
    unrolled = keyframe_rotation(key)
    key["roll_deg"] = math.degrees(math.atan2(float(rotation[:, 0] @ unrolled[:, 1]),
                                              float(rotation[:, 0] @ unrolled[:, 0])))
    if fov is not None:
        key["fov_deg"] = fov
    return key


def _view_fov(K: torch.Tensor, width: int, height: int) -> Optional[float]:
    """None where K is CVD's default, else the horizontal field of view of its first frame."""
    if torch.allclose(K, cvd_intrinsics(width, height).expand_as(K), rtol=0, atol=1e-9):
        return None
    # Rounded to 1e-9 degrees: K came from a fov (intrinsics_from_fov) and the JSON should say 60, not 59.99999999999999.
    return round(math.degrees(2.0 * math.atan(width / (2.0 * float(K[0, 0, 0])))), 9)


def keyframes_from_rig(rig: CameraSet, key_frames: Sequence[int]) -> Dict[str, Any]:
    """A ``cvd_keyframes/1`` document with keyframes at ``key_frames`` (first must be 0, last the last)."""
    rig = rig.as_rig()
    last = rig.n_frames - 1
    if list(key_frames)[0] != 0 or list(key_frames)[-1] != last:
        raise CameraError(f"key frames must run from 0 to {last}, got {list(key_frames)}")
    views = []
    for v in range(rig.n_views):
        fov = _view_fov(rig.K[v], rig.width, rig.height)
        c2w = rig.c2w[v].numpy()
        keys = [_key_from_pose(c2w[f], f / last if last else float(k), fov) for k, f in enumerate(key_frames)]
        if last == 0:  # a one-frame rig: hold the pose over the clip
            keys = [keys[0], dict(keys[0], t=1.0)]
        views.append({"label": rig.labels[v], "keyframes": keys})
    doc = {"format": KEYFRAMES_FORMAT, "shared_first_frame": True, "views": views}
    first = views[0]["keyframes"][0]
    doc["shared_first_frame"] = all(_same_start(view["keyframes"][0], first) for view in views)
    return doc


def keyframes_from_settings(preset: str, views: int, frames: int, width: int, height: int, camera_dist: float = 0.5,
                            speed: float = 1.0, angle_deg: float = 30.0, fov_deg: float = 0.0, perturb: float = 0.0,
                            perturb_seed: int = 0, custom_json: str = "") -> Dict[str, Any]:
    """The keyframes the camera path editor starts from, for CVD Camera Trajectory's settings.

    A preset becomes its poses at ``t = 0`` and ``t = 1`` (exact: presets are linear in translation and
    slerp in rotation) or, for ``orbit``, five poses along its arc. ``custom_json`` in keyframes form is
    returned as parsed; in c2w form, up to five evenly spaced frames become keyframes.
    """
    if preset in PRESETS:
        count = _PRESET_KEYS.get(preset, 2)
        rig = make_preset_rig(preset, views, count, width, height, camera_dist=camera_dist, speed=speed,
                              angle_deg=angle_deg, perturb_traj=perturb, seed=perturb_seed,
                              fov_deg=fov_deg if fov_deg > 0 else None)
        return keyframes_from_rig(rig, list(range(count)))
    try:
        data = json.loads(custom_json)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CameraError(f"camera JSON is not valid JSON: {exc}") from None
    if is_keyframes_form(data):
        return parse_keyframes(data)
    rig = rig_from_json(custom_json, width, height)
    count = min(rig.n_frames, _CUSTOM_KEYS)
    picks = sorted({int(round(x)) for x in np.linspace(0, rig.n_frames - 1, count)})
    return keyframes_from_rig(rig, picks)
