"""Lifting 2D trajectories (C3V stage 3 initialisation) to 3D, and the facing (yaw) rule.

C3V (Zhu et al. 2024, §4.3, Eq. 5 and 8): each per-frame 2D box is lifted with the depth found at
the box's BOTTOM-CENTRE (the point where the object touches the ground, so the depth there is the
ground's, not an occluder's), back-projected through the reference camera, then moved up by half the
object's 3D height so the 3D box stands on that point; the object's yaw faces the next trajectory
point. (C3V then refines scale/location/rotation with SDS; that optimisation is out of scope.)

Conventions are those of :mod:`cvd_core.scene.plan`: reference camera = world frame, OpenCV axes
(y down, so "up" is -y); ``trajectory_2d.points`` are box centres; the 2D box height is
``scale * image_height``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .plan import ScenePlanError, validate_plan

__all__ = ["lift_trajectories", "entity_yaws", "ground_plane_depth", "depth_to_2d"]

DEPTH_KINDS = ("depth", "disparity")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def depth_to_2d(depth: Any) -> np.ndarray:
    """A depth map as ``[H, W]`` float64 from ``[H,W]``, a MASK ``[1,H,W]`` or an IMAGE ``[1,H,W,C]``
    / ``[H,W,C]`` (the first channel is used: depth nodes write the same value in all three)."""
    arr = _to_numpy(depth)
    if arr.ndim == 4:
        arr = arr[0, ..., 0]
    elif arr.ndim == 3:
        # channel-last image when the last axis looks like channels, else a batch of one mask
        arr = arr[..., 0] if arr.shape[-1] in (1, 3, 4) and arr.shape[0] > 4 else arr[0]
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"depth must be [H,W], [1,H,W] (MASK) or [1,H,W,C] (IMAGE), got shape {list(np.shape(depth))}")
    return arr


def _as_intrinsics(K: Any) -> np.ndarray:
    K = _to_numpy(K)
    while K.ndim > 2:  # accept a rig's [V,F,3,3] or [F,3,3]: the reference camera is the first one
        K = K[0]
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be a 3x3 intrinsics matrix with positive focal lengths, got {K.tolist()}")
    return K


def _scaled_intrinsics(K: np.ndarray, from_size: Sequence[int], to_size: Sequence[int]) -> np.ndarray:
    """K for the same view at another pixel size (a plain resize: x scales by W'/W, y by H'/H)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = K.copy()
    out[0, :] *= sx
    out[1, :] *= sy
    return out


def ground_plane_depth(K: Any, width: int, height: int, camera_height: float = 1.0,
                       max_depth: float = 100.0) -> np.ndarray:
    """The z-depth ``[H, W]`` of a flat ground plane ``camera_height`` below a level camera
    (OpenCV: the plane y = +camera_height), sampled at pixel centres; ``max_depth`` at and above the
    horizon. A stand-in depth map when no depth estimator is wired, and a test fixture."""
    K = _as_intrinsics(K)
    v = np.arange(height, dtype=np.float64) + 0.5
    ray_y = (v - K[1, 2]) / K[1, 1]  # y of the ray with z = 1 (columns do not matter for a level camera)
    with np.errstate(divide="ignore"):
        z = np.where(ray_y > 0, camera_height / np.maximum(ray_y, 1e-12), max_depth)
    z = np.minimum(z, max_depth)
    return np.repeat(z[:, None], width, axis=1)


def entity_yaws(points: Sequence[Sequence[float]], facing: Any) -> np.ndarray:
    """Yaw per frame in radians (about the vertical axis; 0 faces +z, +pi/2 faces +x).

    ``facing`` is a fixed angle in degrees, or ``"next_point"`` (C3V Eq. 8): each frame faces the
    direction to the next point on the ground (x-z plane); the last frame keeps the previous
    direction, and frames where the entity does not move keep the last known direction (0 if it
    never moves).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    count = len(pts)
    if facing != "next_point":
        return np.full(count, math.radians(float(facing)))
    yaws = np.full(count, np.nan)
    for f in range(count - 1):
        dx, dz = pts[f + 1, 0] - pts[f, 0], pts[f + 1, 2] - pts[f, 2]
        if math.hypot(dx, dz) > 1e-9:
            yaws[f] = math.atan2(dx, dz)
    # frames without their own direction: last frame and pauses take the previous direction, a
    # leading pause takes the first direction found.
    known = np.flatnonzero(~np.isnan(yaws))
    if len(known) == 0:
        return np.zeros(count)
    yaws[: known[0]] = yaws[known[0]]
    for f in range(count):
        if np.isnan(yaws[f]):
            yaws[f] = yaws[f - 1]
    return yaws


def _sample_depth(depth: np.ndarray, u: float, v: float, image_size: Sequence[int]) -> float:
    """Bilinear depth under the reference-image point (u, v); the depth map may have any size (its
    pixel i covers [i, i+1) of its own grid, its value sits at the centre i + 0.5)."""
    dh, dw = depth.shape
    x = min(max(u * dw / image_size[0] - 0.5, 0.0), dw - 1.0)
    y = min(max(v * dh / image_size[1] - 0.5, 0.0), dh - 1.0)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = min(x0 + 1, dw - 1), min(y0 + 1, dh - 1)
    fx, fy = x - x0, y - y0
    top = depth[y0, x0] * (1 - fx) + depth[y0, x1] * fx
    bottom = depth[y1, x0] * (1 - fx) + depth[y1, x1] * fx
    return float(top * (1 - fy) + bottom * fy)


def _metric_depth(value: float, depth_kind: str, depth_scale: float, max_depth: float) -> float:
    if depth_kind == "depth":
        z = value * depth_scale
    else:  # disparity-like maps (MiDaS, Depth Anything: bright = near) store something like 1/z
        z = depth_scale / value if value > 0 else math.inf
    return min(z, max_depth)


def lift_trajectories(plan: Dict[str, Any], depth: Any, K: Any, *, depth_kind: str = "depth",
                      depth_scale: float = 1.0, k_size: Optional[Sequence[int]] = None,
                      size_from_scale: bool = True, max_depth: float = 100.0,
                      warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """Give every entity that has a ``trajectory_2d`` a ``trajectory_3d`` (and a ``size``).

    ``depth``: ``[H,W]`` map of the reference image (any resolution; MASK/IMAGE layouts accepted),
    read as z-depth = value * ``depth_scale`` (``depth_kind="depth"``: metric or relative depth, the
    scale knob sets the units) or z = ``depth_scale`` / value (``"disparity"``: bright = near, as most
    monocular estimators output). Depths are capped at ``max_depth``.
    ``K``: reference-camera intrinsics (``[3,3]``; a rig's ``[V,F,3,3]`` uses view 0, frame 0) in
    pixels of ``k_size`` = (W, H) (default: each trajectory's own ``image_size``).
    Per frame: bottom-centre b = centre + (0, scale*H/2) in the reference image, z = depth at b
    (bilinear), B = z K^-1 [b, 1], 3D centre = B - (0, height/2, 0) (y points down). With ``size_from_scale`` the
    3D height is scale * H * z_start / fy (the LLM's scale, at the start frame) and width/depth keep the
    entity's ``size`` proportions (a cube without one); otherwise an existing ``size`` is used as is.
    Returns a new validated plan; ``warnings`` (a list) receives notes such as capped depths.
    """
    if depth_kind not in DEPTH_KINDS:
        raise ValueError(f"depth_kind must be one of {DEPTH_KINDS}, got {depth_kind!r}")
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number, got {depth_scale}")
    plan, _ = validate_plan(plan)
    depth_map = depth_to_2d(depth)
    K_ref = _as_intrinsics(K)
    problems: List[str] = []
    notes = warnings if warnings is not None else []

    for index, entity in enumerate(plan["entities"]):
        traj = entity.get("trajectory_2d")
        if traj is None:
            continue
        where = f"entities[{index}] ({entity['id']})"
        image_w, image_h = traj["image_size"]
        K_img = _scaled_intrinsics(K_ref, k_size, traj["image_size"]) if k_size is not None else K_ref
        K_inv = np.linalg.inv(K_img)
        half_box_px = traj["scale"] * image_h / 2.0
        bottoms, capped = [], 0
        for f, (u, v) in enumerate(traj["points"]):
            bu, bv = u, min(v + half_box_px, float(image_h))
            raw = _sample_depth(depth_map, bu, bv, traj["image_size"])
            if not math.isfinite(raw) or (depth_kind == "depth" and raw <= 0):
                problems.append(f"{where}.trajectory_2d frame {f}: depth {raw:g} at bottom-centre "
                                f"({bu:.1f}, {bv:.1f}) is not a positive distance")
                continue
            z = _metric_depth(raw, depth_kind, depth_scale, max_depth)
            capped += z >= max_depth
            bottoms.append(z * (K_inv @ np.array([bu, bv, 1.0])))
        if len(bottoms) != len(traj["points"]):
            continue
        if capped:
            notes.append(f"{where}: depth capped at max_depth={max_depth:g} for {capped} frame(s) "
                         f"(sky or zero disparity under the box)")
        bottoms = np.stack(bottoms)
        size = entity.get("size")
        if size_from_scale or size is None:
            height = traj["scale"] * image_h * bottoms[0, 2] / K_img[1, 1]
            ratio_w, ratio_d = (size[0] / size[1], size[2] / size[1]) if size is not None else (1.0, 1.0)
            size = [height * ratio_w, height, height * ratio_d]
        centres = bottoms - np.array([0.0, size[1] / 2.0, 0.0])
        entity["size"] = [float(s) for s in size]
        entity["trajectory_3d"] = centres.tolist()

    if problems:
        raise ScenePlanError(problems, header="cannot lift the 2D trajectories")
    lifted, more = validate_plan(plan)
    notes.extend(more)
    return lifted
