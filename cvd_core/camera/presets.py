"""Camera rigs for multi-view generation: CVD's presets, a few more, and custom JSON rigs.

Every view starts at the identity pose (CVD requires identical first frames) and moves towards a
per-view *target* over the clip. Per-view targets (view i of N, ``d = camera_dist``):

=============  =========================================================================================
``circle``     position ``d (cos a, sin a, 0)``, ``a = 2 pi i / N``, looking at (0, 0, 1)      (CVD)
``upper_hemi`` as circle with ``a = pi i / (N - 1) + pi`` (upper half circle; N = 1: a = pi)   (CVD)
``interpolate`` position ``d (cos a, 0.3 cos(a + 0.5), -0.2 sin a)``, ``a = pi i / (N - 1)``,
               looking at (0, 0, 1)                                                            (CVD)
``pan``        rotate in place about the camera's y axis by ``angle_deg * s_i`` (positive = right)
``zoom``       move along the optical axis by ``d * s_i`` (positive = forward, "zoom in")
``orbit``      circle around the point (0, 0, ``orbit_distance``) by ``angle_deg * s_i`` about the
               vertical axis, always looking at it (an arc, not a straight line)
``static``     stay at the identity
=============  =========================================================================================

with ``s_i`` spread evenly over [-1, 1] (``s = 1`` for a single view), so a 2-view ``pan`` pans
left and right. CVD's construction is followed exactly for the first three: look-at with x hint
(1, 0, 0), then linear translation and slerp rotation from the identity at
``alpha = speed * t / (frames - 1)``, and ``K = [[223.578, 0, 128], [0, 223.578, 128]]`` at 256
pixels, scaled by ``width / 256`` (row 0) and ``height / 256`` (row 1); ``fov_deg`` replaces it by
square-pixel intrinsics with that horizontal field of view.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .geometry import (interpolate_pose, inverse_affine, intrinsics_from_fov, look_at_rotation, relative_to_first,
                       resize_crop_intrinsics)
from .rig import CameraError, CameraSet

__all__ = ["PRESETS", "make_preset_rig", "preset_targets", "rig_from_json", "cvd_intrinsics"]

PRESETS: Tuple[str, ...] = ("circle", "upper_hemi", "interpolate", "pan", "zoom", "orbit", "static")

_CVD_FOCAL_256 = 223.578  # inference_epi_advanced.py: ~59.6 degree field of view at 256 px
_CVD_LOOK_AT = (0.0, 0.0, 1.0)


def cvd_intrinsics(width: int, height: int) -> torch.Tensor:
    """CVD's multi-view K ``[3, 3]``: rows 0 and 1 of the 256-px K scaled by W/256 and H/256."""
    K = torch.tensor([[_CVD_FOCAL_256, 0.0, 128.0], [0.0, _CVD_FOCAL_256, 128.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    K[0] *= width / 256.0
    K[1] *= height / 256.0
    return K


def _spread(views: int) -> np.ndarray:
    """Per-view signed amount in [-1, 1] (a single view gets +1)."""
    return np.array([1.0]) if views == 1 else np.linspace(-1.0, 1.0, views)


def _look_at_pose(position: Sequence[float]) -> np.ndarray:
    pose = np.eye(4)
    try:
        pose[:3, :3] = look_at_rotation(position, _CVD_LOOK_AT)
    except ValueError as exc:
        raise CameraError(f"camera_dist is too large for this preset: {exc}") from None
    pose[:3, 3] = position
    return pose


def _yaw(angle_rad: float) -> np.ndarray:
    """Rotation about the camera y axis (OpenCV y points down, so positive turns to the right)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def preset_targets(preset: str, views: int, camera_dist: float = 0.5, angle_deg: float = 30.0) -> List[np.ndarray]:
    """Target pose (4x4 camera-to-world, reached at ``alpha = 1``) of every view of a preset.

    For ``orbit`` the target is the arc's end pose; the path between follows the arc.
    """
    if preset not in PRESETS:
        raise CameraError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    targets = []
    for i, s in enumerate(_spread(views)):
        pose = np.eye(4)
        if preset == "circle":
            angle = 2.0 * math.pi / views * i
            pose = _look_at_pose(np.array([math.cos(angle), math.sin(angle), 0.0]) * camera_dist)
        elif preset == "upper_hemi":
            angle = (math.pi / (views - 1) * i if views > 1 else 0.0) + math.pi
            pose = _look_at_pose(np.array([math.cos(angle), math.sin(angle), 0.0]) * camera_dist)
        elif preset == "interpolate":
            angle = math.pi / (views - 1) * i if views > 1 else 0.0
            pose = _look_at_pose(np.array([math.cos(angle), math.cos(angle + 0.5) * 0.3,
                                           -math.sin(angle) * 0.2]) * camera_dist)
        elif preset == "pan":
            pose[:3, :3] = _yaw(math.radians(angle_deg * s))
        elif preset == "zoom":
            pose[2, 3] = camera_dist * s
        elif preset == "orbit":
            pose = _orbit_pose(math.radians(angle_deg * s), 1.0)
        targets.append(pose)
    return targets


def _orbit_pose(angle_rad: float, distance: float) -> np.ndarray:
    """Pose on a horizontal circle around (0, 0, distance), looking at it, starting at the identity."""
    pose = np.eye(4)
    rotation = _yaw(angle_rad)
    pose[:3, :3] = rotation
    pose[:3, 3] = np.array([0.0, 0.0, distance]) - rotation @ np.array([0.0, 0.0, distance])
    return pose


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CameraError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise CameraError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value: Any, minimum: Optional[float] = None, strict: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CameraError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise CameraError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise CameraError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def make_preset_rig(preset: str, views: int, frames: int, width: int, height: int,
                    camera_dist: float = 0.5, speed: float = 1.0, angle_deg: float = 30.0,
                    orbit_distance: float = 1.0, perturb_traj: float = 0.0, seed: int = 0,
                    fov_deg: Optional[float] = None) -> CameraSet:
    """A ``[views, frames]`` rig of preset trajectories (see the module docstring for the targets).

    ``camera_dist``: distance of circle/upper_hemi/interpolate targets and zoom travel (CVD default
    0.5). ``speed``: fraction of the way to the target reached at the last frame (1 = CVD;
    > 1 overshoots along the same path). ``angle_deg``: pan / orbit amplitude.
    ``orbit_distance``: distance to the orbited point. ``perturb_traj``: CVD's
    ``--cam_perturb_traj`` (random offset of each target position, std in scene units, drawn
    from ``seed``). ``fov_deg``: use square-pixel intrinsics with this horizontal FOV instead of
    CVD's K. Every view's frame 0 is the identity.
    """
    if preset not in PRESETS:
        raise CameraError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    views = _check_int("views", views, 1)
    frames = _check_int("frames", frames, 1)
    camera_dist = _check_real("camera_dist", camera_dist, 0.0)
    speed = _check_real("speed", speed, 0.0)
    angle_deg = _check_real("angle_deg", angle_deg)
    orbit_distance = _check_real("orbit_distance", orbit_distance, 0.0, strict=True)
    perturb_traj = _check_real("perturb_traj", perturb_traj, 0.0)
    # Validate the frame size before any geometry so the message is about the size.
    CameraSet(torch.eye(3)[None], torch.eye(4)[None], width, height)

    alphas = speed * (np.arange(frames) / (frames - 1) if frames > 1 else np.zeros(1))
    rng = np.random.default_rng(seed)
    identity = np.eye(4)
    trajectories = []
    for i, target in enumerate(preset_targets(preset, views, camera_dist, angle_deg)):
        if preset == "orbit":
            angle = math.radians(angle_deg * _spread(views)[i])
            poses = np.stack([_orbit_pose(alpha * angle, orbit_distance) for alpha in alphas])
        else:
            poses = interpolate_pose(identity, target, alphas)
        if perturb_traj > 0:
            poses[:, :3, 3] += alphas[:, None] * (perturb_traj * rng.standard_normal(3))[None]
        trajectories.append(poses)

    c2w = torch.as_tensor(np.stack(trajectories), dtype=torch.float64)
    if fov_deg is not None:
        K = intrinsics_from_fov(_check_real("fov_deg", fov_deg), width, height)
    else:
        K = cvd_intrinsics(width, height)
    K = K.expand(views, frames, 3, 3).clone()
    labels = tuple(f"{preset} {i}/{views}" for i in range(views))
    return CameraSet(K, c2w, width, height, labels)


# --------------------------------------------------------------------------------------- JSON rigs
def _matrix_list(value: Any, shape: Tuple[int, int], what: str) -> torch.Tensor:
    """A non-empty list of per-frame matrices; for poses each may be 4x4 or 3x4 (gets [0,0,0,1])."""
    rule = f"{what} must be a non-empty list of {shape[0]}x{shape[1]}" + (" (or 3x4)" if shape == (4, 4) else "") + \
        " matrices of numbers"
    if not isinstance(value, list) or not value:
        raise CameraError(rule)
    matrices = []
    for frame, item in enumerate(value):
        try:
            matrix = torch.as_tensor(item, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise CameraError(f"{rule}; frame {frame} is not") from None
        if shape == (4, 4) and matrix.shape == (3, 4):
            matrix = torch.cat([matrix, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
        if matrix.shape != shape:
            raise CameraError(f"{rule}; frame {frame} has shape {list(matrix.shape)}")
        if not torch.isfinite(matrix).all():
            raise CameraError(f"{what}: frame {frame} must be finite (no NaN or inf)")
        matrices.append(matrix)
    return torch.stack(matrices)


_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _view_from_json(entry: Any, index: int, defaults: Dict[str, Any], width: int, height: int):
    where = f"views[{index}]"
    if not isinstance(entry, dict):
        raise CameraError(f"{where} must be an object with 'c2w' or 'w2c', got {type(entry).__name__}")
    unknown = set(entry) - {"label", "c2w", "w2c", "K", "fov_deg", "K_size", "convention"}
    if unknown:
        raise CameraError(f"{where} has unknown keys {sorted(unknown)} (allowed: label, c2w, w2c, K, fov_deg, "
                          f"K_size, convention)")
    if ("c2w" in entry) == ("w2c" in entry):
        raise CameraError(f"{where} must give exactly one of 'c2w' or 'w2c' (a list of 4x4 or 3x4 matrices)")
    if "c2w" in entry:
        c2w = _matrix_list(entry["c2w"], (4, 4), f"{where}.c2w")
    else:
        w2c = _matrix_list(entry["w2c"], (4, 4), f"{where}.w2c")
        if (np.abs(np.linalg.det(w2c[:, :3, :3].numpy())) < 1e-9).any():
            raise CameraError(f"{where}.w2c has a singular rotation")
        c2w = inverse_affine(w2c)
    convention = entry.get("convention", defaults.get("convention", "opencv"))
    if convention not in ("opencv", "opengl"):
        raise CameraError(f"{where}.convention must be 'opencv' or 'opengl', got {convention!r}")
    if convention == "opengl":  # OpenGL/NeRF camera axes: y up, z backwards -> flip columns 1 and 2
        c2w = c2w @ _OPENGL_TO_OPENCV
    frames = c2w.shape[0]

    intrinsics = {key: entry.get(key, defaults.get(key)) for key in ("K", "fov_deg", "K_size")}
    if intrinsics["K"] is not None and intrinsics["fov_deg"] is not None:
        raise CameraError(f"{where} gives both 'K' and 'fov_deg'; give one")
    if intrinsics["K"] is not None:
        K = torch.as_tensor(intrinsics["K"], dtype=torch.float64) if _is_numeric(intrinsics["K"]) else None
        if K is None or K.shape not in ((3, 3), (frames, 3, 3)):
            raise CameraError(f"{where}.K must be one 3x3 matrix or one per frame ({frames}), in pixels")
        if intrinsics["K_size"] is not None:
            size = intrinsics["K_size"]
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and _is_numeric(size)):
                raise CameraError(f"{where}.K_size must be [width, height] of the frame K refers to, got {size!r}")
            K = resize_crop_intrinsics(K, (float(size[0]), float(size[1])), (width, height))
    elif intrinsics["fov_deg"] is not None:
        try:
            K = intrinsics_from_fov(_check_real(f"{where}.fov_deg", intrinsics["fov_deg"]), width, height)
        except ValueError as exc:
            raise CameraError(f"{where}: {exc}") from None
    else:
        K = cvd_intrinsics(width, height)
    K = K.expand(frames, 3, 3).clone()
    label = str(entry.get("label", f"view {index}"))
    return K, relative_to_first(c2w), label


def _is_numeric(value: Any) -> bool:
    try:
        torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def rig_from_json(text: str, width: int, height: int) -> CameraSet:
    """A rig from a JSON list of poses.

    Schema (``views`` may also be the top-level list; keys other than ``c2w``/``w2c`` are optional,
    and ``K``, ``fov_deg``, ``K_size``, ``convention`` given at the top level apply to every view)::

        {"views": [
           {"label": "left",                 # shown in previews
            "c2w": [[[...4 numbers...] x 4], ...],  # one 4x4 (or 3x4) camera-to-world per frame
            # or "w2c": [...]                 # world-to-camera instead
            "fov_deg": 60,                   # horizontal field of view, square pixels
            # or "K": [[fx,0,cx],[0,fy,cy],[0,0,1]] (or one per frame), pixels of a frame of
            #    size "K_size": [W, H] (default: width x height), converted by resize-and-crop
            "convention": "opencv"}           # or "opengl" (x right, y up, z backwards)
        ]}

    Without ``K``/``fov_deg``, CVD's intrinsics are used. All views need the same number of
    frames. Each view is made relative to its own first frame (CVD's convention).
    """
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CameraError(f"camera JSON is not valid JSON: {exc}") from None
    if isinstance(data, list):
        data = {"views": data}
    if not isinstance(data, dict) or not isinstance(data.get("views"), list) or not data["views"]:
        raise CameraError("camera JSON must be an object with a non-empty 'views' list (or that list itself)")
    defaults = {key: data[key] for key in ("K", "fov_deg", "K_size", "convention") if key in data}
    parts = [_view_from_json(entry, i, defaults, width, height) for i, entry in enumerate(data["views"])]
    frame_counts = [part[0].shape[0] for part in parts]
    if len(set(frame_counts)) != 1:
        raise CameraError(f"all views must have the same number of frames, got {frame_counts}")
    K = torch.stack([part[0] for part in parts])
    c2w = torch.stack([part[1] for part in parts])
    return CameraSet(K, c2w, width, height, tuple(part[2] for part in parts))
