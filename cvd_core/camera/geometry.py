"""Two-view geometry and ray maps for CVD cameras (OpenCV axes, camera-to-world poses).

- :func:`fundamental_matrix`: F with ``x_tgt^T F x_src = 0`` computed exactly as CVD's
  ``calc_fundamental_matrix`` (``T = inv(c2w_tgt) @ c2w_src``, ``E = R [-R^T t]_x``,
  ``F = K_tgt^-T E K_src^-1``), batched over leading dimensions.
- :func:`plucker_embedding`: CameraCtrl's ``ray_condition`` Plücker map ``[o x d, d]``.
- pose helpers shared by the loaders and presets (relative poses, look-at, rotation slerp,
  intrinsics for resize-and-crop).

Everything works in the dtype of its inputs; :class:`~cvd_core.camera.rig.CameraSet` stores
float64, so the geometry is computed in float64 unless a caller converts. Plain tensors in and out:
this module imports nothing from :mod:`.rig` (the rig-level helper ``pair_fundamentals`` lives there).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "skew", "inverse_3x3", "inverse_affine", "relative_to_first", "fundamental_matrix", "plucker_embedding",
    "resize_crop_intrinsics", "intrinsics_from_fov", "look_at_rotation", "slerp_rotation",
    "interpolate_pose",
]


# --------------------------------------------------------------------------------------- basics
def skew(vec: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` (``[v]_x @ w == v x w``) of ``vec`` ``[..., 3]`` -> ``[..., 3, 3]``."""
    zero = torch.zeros_like(vec[..., 0])
    x, y, z = vec[..., 0], vec[..., 1], vec[..., 2]
    rows = [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)]
    return torch.stack(rows, -2)


def inverse_3x3(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``[..., 3, 3]`` matrices by cofactors.

    Closed form on purpose: batched LAPACK calls on tiny matrices are dominated by thread-pool
    overhead (milliseconds each on a busy CPU), and cameras only ever need 3x3 / affine 4x4.
    """
    m = matrix
    cof = torch.stack([
        torch.linalg.cross(m[..., 1, :], m[..., 2, :], dim=-1),
        torch.linalg.cross(m[..., 2, :], m[..., 0, :], dim=-1),
        torch.linalg.cross(m[..., 0, :], m[..., 1, :], dim=-1),
    ], dim=-1)  # columns are the cross products: adj(m) = cof
    det = (m[..., 0, :] * cof[..., :, 0]).sum(-1)
    return cof / det[..., None, None]


def inverse_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``[..., 4, 4]`` affine matrices (last row ``[0, 0, 0, 1]``), e.g. c2w <-> w2c."""
    linear_inv = inverse_3x3(matrix[..., :3, :3])
    out = torch.zeros_like(matrix)
    out[..., :3, :3] = linear_inv
    out[..., :3, 3] = -(linear_inv @ matrix[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def relative_to_first(c2w: torch.Tensor) -> torch.Tensor:
    """Poses ``[..., F, 4, 4]`` re-expressed relative to frame 0: ``inv(c2w[..., 0]) @ c2w``.

    Frame 0 of the result is set to the exact identity (it is by definition), so that two views
    starting from it have F = 0 exactly at frame 0, as in CVD.
    """
    c2w = torch.as_tensor(c2w)
    if c2w.dim() < 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must have shape [..., F, 4, 4], got {list(c2w.shape)}")
    relative = inverse_affine(c2w[..., :1, :, :]) @ c2w
    relative[..., 0, :, :] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    return relative


# --------------------------------------------------------------------------------------- epipolar
def fundamental_matrix(c2w_src: torch.Tensor, c2w_tgt: torch.Tensor,
                       K_src: torch.Tensor, K_tgt: torch.Tensor) -> torch.Tensor:
    """Fundamental matrix from a source camera to a target camera: ``x_tgt^T F x_src = 0``.

    ``c2w_*``: ``[..., 4, 4]`` camera-to-world (OpenCV axes); ``K_*``: ``[..., 3, 3]`` pixel
    intrinsics; leading dimensions broadcast. ``x`` are homogeneous pixel coordinates
    ``(u, v, 1)``. As in CVD: ``T = inv(c2w_tgt) @ c2w_src`` (source camera to target camera),
    ``E = R [t_ess]_x`` with ``t_ess = -R^T t``, ``F = K_tgt^-T E K_src^-1``.
    Cameras with identical poses (no baseline) give F = 0 exactly; so does a pure rotation.
    """
    c2w_src, c2w_tgt, K_src, K_tgt = (torch.as_tensor(m) for m in (c2w_src, c2w_tgt, K_src, K_tgt))
    dtype = torch.promote_types(torch.promote_types(c2w_src.dtype, c2w_tgt.dtype),
                                torch.promote_types(K_src.dtype, K_tgt.dtype))
    if not dtype.is_floating_point:
        dtype = torch.float64
    c2w_src, c2w_tgt, K_src, K_tgt = (m.to(dtype) for m in (c2w_src, c2w_tgt, K_src, K_tgt))
    src_to_tgt = inverse_affine(c2w_tgt) @ c2w_src
    rotation = src_to_tgt[..., :3, :3]
    translation = src_to_tgt[..., :3, 3]
    t_ess = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    essential = rotation @ skew(t_ess)
    F = inverse_3x3(K_tgt).transpose(-1, -2) @ essential @ inverse_3x3(K_src)
    # inv(A) @ A is only the identity up to rounding: make "same pose" exactly F = 0, which the
    # epipolar bias treats as "no geometry" (pseudo lines on frame 0).
    same_pose = (c2w_src == c2w_tgt).flatten(-2).all(-1)
    return torch.where(same_pose[..., None, None], torch.zeros_like(F), F)


# --------------------------------------------------------------------------------------- rays
def plucker_embedding(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray map ``[..., 6, H, W]`` = ``[o x d, d]`` per pixel, as CameraCtrl's ``ray_condition``.

    ``K`` ``[..., 3, 3]`` pixel intrinsics (fx, fy, cx, cy are used), ``c2w`` ``[..., 4, 4]``.
    Pixel (row j, column i) is sampled at its centre ``(i + 0.5, j + 0.5)``; ``d`` is the unit
    viewing direction in world space, ``o`` the camera centre.
    """
    K = torch.as_tensor(K)
    c2w = torch.as_tensor(c2w)
    dtype = torch.promote_types(K.dtype, c2w.dtype)
    K, c2w = K.to(dtype), c2w.to(dtype)
    if K.shape[:-2] != c2w.shape[:-2]:
        raise ValueError(f"K {list(K.shape)} and c2w {list(c2w.shape)} must have the same leading shape")
    cols = torch.arange(width, dtype=dtype, device=K.device) + 0.5
    rows = torch.arange(height, dtype=dtype, device=K.device) + 0.5
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (cols[None, :] - cx) / fx  # camera-space direction (x, y, 1) before normalising
    y = (rows[:, None] - cy) / fy
    inv_norm = torch.rsqrt(x * x + y * y + 1.0)  # [..., H, W]
    camera_dir = (x * inv_norm, y * inv_norm, inv_norm)
    # Written channel by channel straight into the [..., 6, H, W] result: no [..., H, W, 3]
    # intermediates, cat or transposes (the maps are large: 6 x 256^2 per frame).
    out = torch.empty(*c2w.shape[:-2], 6, height, width, dtype=dtype, device=K.device)
    rotation, origin = c2w[..., :3, :3], c2w[..., :3, 3]
    for i in range(3):  # d_world = R @ d_camera
        r = rotation[..., i, :, None, None]
        out[..., 3 + i, :, :] = r[..., 0, :, :] * camera_dir[0] + r[..., 1, :, :] * camera_dir[1] + \
            r[..., 2, :, :] * camera_dir[2]
    o = [origin[..., i, None, None] for i in range(3)]
    d = [out[..., 3 + i, :, :] for i in range(3)]
    out[..., 0, :, :] = o[1] * d[2] - o[2] * d[1]  # moment o x d
    out[..., 1, :, :] = o[2] * d[0] - o[0] * d[2]
    out[..., 2, :, :] = o[0] * d[1] - o[1] * d[0]
    return out


# --------------------------------------------------------------------------------------- intrinsics
def resize_crop_intrinsics(K: torch.Tensor, src_size: Tuple[float, float], dst_size: Tuple[int, int]) -> torch.Tensor:
    """Pixel intrinsics after resizing a ``src_size`` (W, H) frame to cover ``dst_size`` and center-cropping.

    The scale is ``s = max(W_dst / W_src, H_dst / H_src)`` (the side that is short *relative to the
    target aspect* fits exactly; for a 16:9 source and a square target that is the short side),
    then ``cx' = s cx - (s W_src - W_dst) / 2`` and likewise for y.
    """
    src_w, src_h = (float(v) for v in src_size)
    dst_w, dst_h = (float(v) for v in dst_size)
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_size} and target {dst_size}")
    scale = max(dst_w / src_w, dst_h / src_h)
    K = torch.as_tensor(K).clone()
    K[..., 0, :] = K[..., 0, :] * scale
    K[..., 1, :] = K[..., 1, :] * scale
    K[..., 0, 2] -= (scale * src_w - dst_w) / 2.0
    K[..., 1, 2] -= (scale * src_h - dst_h) / 2.0
    return K


def intrinsics_from_fov(fov_deg: float, width: int, height: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pinhole K ``[3, 3]`` with horizontal field of view ``fov_deg``, square pixels, centred principal point."""
    if not (0.0 < float(fov_deg) < 180.0):
        raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
    focal = (width / 2.0) / math.tan(math.radians(float(fov_deg)) / 2.0)
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


# --------------------------------------------------------------------------------------- poses
def look_at_rotation(position: Sequence[float], target: Sequence[float],
                     x_hint: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """Camera-to-world rotation (OpenCV axes) of a camera at ``position`` looking at ``target``.

    CVD's construction: ``z = target - position``, ``y = z x x_hint``, ``x = y x z``, each
    normalised (CVD normalises z only through scipy's rotation fit; the result is the same).
    """
    z = np.asarray(target, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    y = np.cross(z, np.asarray(x_hint, dtype=np.float64))
    if np.linalg.norm(z) < 1e-9 or np.linalg.norm(y) < 1e-9 * max(1.0, np.linalg.norm(z)):
        raise ValueError(f"look-at is degenerate: the camera at {list(position)} looks at {list(target)} "
                         f"along the x axis or at itself")
    z = z / np.linalg.norm(z)
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def _rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation, w >= 0 (Shepperd's stable branch choice)."""
    m = rotation
    trace = np.trace(m)
    candidates = [trace, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        w = math.sqrt(1.0 + trace) / 2.0
        q = np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)])
    else:
        i = k - 1
        j, l = (i + 1) % 3, (i + 2) % 3
        s = math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[l, l], 0.0)) * 2.0
        q = np.zeros(4)
        q[0] = (m[l, j] - m[j, l]) / s
        q[1 + i] = s / 4.0
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + l] = (m[l, i] + m[i, l]) / s
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def _axis_angle_to_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula for a unit ``axis``."""
    K = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * (K @ K)


def slerp_rotation(rot_src: np.ndarray, rot_tgt: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Spherical linear interpolation (shortest arc) of two rotations at ``alphas`` -> ``[N, 3, 3]``.

    ``alpha`` 0 gives ``rot_src``, 1 gives ``rot_tgt``; values beyond [0, 1] extrapolate along the
    same arc (used by ``speed`` > 1). Same result as scipy's ``Slerp`` used by CVD.
    """
    relative = np.asarray(rot_src).T @ np.asarray(rot_tgt)
    q = _rotation_to_quaternion(relative)
    sin_half = np.linalg.norm(q[1:])
    angle = 2.0 * math.atan2(sin_half, q[0])
    axis = q[1:] / sin_half if sin_half > 1e-12 else np.array([1.0, 0.0, 0.0])
    return np.stack([np.asarray(rot_src) @ _axis_angle_to_rotation(axis, float(a) * angle) for a in alphas])


def interpolate_pose(src_pose: np.ndarray, tgt_pose: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Poses ``[N, 4, 4]`` from ``src_pose`` towards ``tgt_pose``: linear translation, slerp rotation.

    CVD's ``interpolate_pose`` with ``alphas = linspace(0, 1, frames)``.
    """
    alphas = np.asarray(list(alphas), dtype=np.float64)
    poses = np.repeat(np.eye(4)[None], len(alphas), axis=0)
    poses[:, :3, 3] = src_pose[None, :3, 3] * (1.0 - alphas[:, None]) + tgt_pose[None, :3, 3] * alphas[:, None]
    poses[:, :3, :3] = slerp_rotation(src_pose[:3, :3], tgt_pose[:3, :3], alphas)
    return poses
